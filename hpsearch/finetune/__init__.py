"""Fine-tuning one model: data and its cache, the model and its levers (LoRA, cheaper dropout, the small
vocabulary), the loop and its checkpoints, the saved model directory, and the recipe that chains them
(:mod:`hpsearch.finetune.recipe`). Knows nothing of Optuna."""
