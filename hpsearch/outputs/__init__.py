"""What a study gives back: exported configs and kept models, a retrained model, the report, the listings."""
