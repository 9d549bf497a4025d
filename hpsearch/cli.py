"""The command line: parse, call, print. Nothing heavy is imported until a command runs.

Exit codes: 0 success; 1 a runtime failure (storage unreachable, a model that will not load);
2 bad usage or a bad config (nothing written); 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import signal
from typing import Any

import click

from .errors import HpsearchError
from .interrupts import Terminated, raise_terminated

STORAGE_HELP = ("Storage URL: an SQLAlchemy URL (sqlite:///x.db, postgresql://...), redis://HOST:PORT/DB (journal on Redis), "
                "journal:///x.log (journal file) or grpc://HOST:PORT (storage-proxy). "
                "Default: $HPSEARCH_STORAGE, else sqlite:///studies.db.")
SET_HELP = "Override a config key: dotted KEY=VALUE, repeatable (e.g. --set fixed.epochs=1). VALUE is YAML; null removes."
DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda"])


class _Group(click.Group):
    """Turns HpsearchError into a short message on stderr and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HpsearchError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            code = 143 if isinstance(exc, Terminated) else 130
            click.echo("interrupted: the running trial was marked FAIL; run the same command to resume", err=True)
            ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="hpsearch")
def cli() -> None:
    """hpsearch: hyperparameter search for fine-tuning pretrained transformers, stored as an Optuna study.

    \b
    hpsearch validate --space search_spaces/lr_dropout.yaml
    hpsearch run      --space search_spaces/lr_dropout.yaml --trials 50
    hpsearch trials   --study sst2-lr-dropout
    hpsearch export   --study sst2-lr-dropout --output best.yaml
    hpsearch train    --config best.yaml --output-dir best-model/
    """


def _load(space: str, overrides: tuple[str, ...]) -> Any:
    from .api import load_space

    return load_space(space, overrides)


@cli.command()
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False), help="Search-space YAML file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def validate(space_file: str, overrides: tuple[str, ...]) -> None:
    """Check a space file (every problem at once) without running anything. Needs no torch and no download."""
    space = _load(space_file, overrides)
    n = len(space.params)
    click.echo(f"{space_file}: OK, study {space.name!r}, {space.study['direction']} {space.study['metric']}, "
               f"{n} searched param{'s' if n != 1 else ''} ({', '.join(space.params) or 'none'}), "
               f"sampler {space.study['sampler']['name']}, pruner {space.study['pruner']['name']}")


@cli.command()
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False), help="Search-space YAML file.")
@click.option("--trials", "n_trials", type=click.IntRange(min=1), default=None,
              help="Trials to run in THIS invocation; re-running the command resumes the study and adds N more.")
@click.option("--total", type=click.IntRange(min=1), default=None,
              help="Stop once the study as a whole has N finished (complete or pruned) trials, across all workers.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--study-name", default=None, help="Study name. Default: study.name in the space file (or its stem).")
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True,
              help="Where trials train: the GPU when there is one (auto), or force cpu / cuda.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Start N local worker processes on the study (CPU cores split between them).")
@click.option("--gpus", default=None, metavar="0,1,..", help="One worker per listed GPU (CUDA_VISIBLE_DEVICES).")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Stop starting new trials after SECONDS.")
@click.option("--heartbeat-interval", type=click.IntRange(min=1), default=None,
              help="Seconds between a running trial's heartbeats (default 60).")
@click.option("--grace-period", type=click.IntRange(min=1), default=None,
              help="Seconds without a heartbeat before a trial counts as dead: FAIL, then retried (default 180).")
@click.option("--max-retry", type=click.IntRange(min=0), default=None,
              help="Times a dead worker's trial is retried with the same params (default 2).")
@click.option("--keep-best", type=click.IntRange(min=1), is_flag=False, flag_value=1, default=None, metavar="[K]",
              help="Keep the weights of the study's K best trials (default 1) in the artifact store, removing "
                   "those that drop out; 'hpsearch export --model DIR' then writes one without retraining.")
@click.option("--artifacts", default=None, metavar="DIR|s3://BUCKET|gs://BUCKET",
              help="Artifact store for --keep-best. Default: beside an SQLite study file (x.db -> x-artifacts/), "
                   "else ./hpsearch-artifacts.")
@click.option("--warm-start", default=None, metavar="STUDY",
              help="Enqueue the best configs of an earlier study in the same storage (another dataset or model "
                   "too) so that this search starts where that one ended.")
@click.option("--mlflow", default=None, is_flag=False, flag_value="", metavar="[URI]",
              help="Log every trial as an MLflow run (params, reports as steps, metrics, attributes, state) in an "
                   "experiment named after the study; without URI, $MLFLOW_TRACKING_URI.")
@click.option("--quiet", is_flag=True, help="Plain log lines instead of the live view.")
def run(space_file: str, n_trials: int | None, total: int | None, overrides: tuple[str, ...], storage: str | None,
        study_name: str | None, device: str, workers: int | None, gpus: str | None, timeout: float | None,
        heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None, keep_best: int | None,
        artifacts: str | None, warm_start: str | None, mlflow: str | None, quiet: bool) -> None:
    """Run trials of a search space into a (new or resumed) study."""
    if n_trials is None and total is None:
        raise click.UsageError("give --trials N (trials in this invocation) or --total N (finished trials in the study)")
    if grace_period and heartbeat_interval and grace_period <= heartbeat_interval:
        raise click.BadParameter("must be longer than --heartbeat-interval", param_hint="--grace-period")
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    if gpu_list and workers and workers != len(gpu_list):
        raise click.BadParameter(f"{workers} workers for {len(gpu_list)} GPUs", param_hint="--workers")
    from .api import run as run_api
    from .storage import redact, resolve_url

    signal.signal(signal.SIGTERM, raise_terminated)
    study = run_api(space_file, trials=n_trials, total=total, storage=storage, study_name=study_name,
                    overrides=overrides, device=device, workers=workers, gpus=gpu_list, timeout=timeout,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry,
                    keep_best=keep_best, artifacts=artifacts, warm_start=warm_start, mlflow=mlflow, quiet=quiet)
    _print_best(study, redact(resolve_url(storage)))


def _print_best(study: Any, where: str) -> None:
    from .listing import state_counts
    from .progress import fmt_params

    counts = state_counts(study)
    click.echo(f"study {study.study_name} in {where}: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    from .confirm import confirmation
    from .exporter import ranked_trials

    ranked = ranked_trials(study)
    if not ranked:
        click.echo("no completed trial yet")
        return
    best, metric = ranked[0], study.user_attrs.get("metric", "value")
    confirmed = confirmation(study, best.number)
    if confirmed is None:
        click.echo(f"best trial {best.number}: {metric}={best.value:.4f}  {fmt_params(best.params)}")
    else:
        click.echo(f"chosen trial {best.number}: {metric}={best.value:.4f}, confirmed {confirmed['score']:.4f} (mean "
                   f"with {len(confirmed['values']) - 1} fold(s))  {fmt_params(best.params)}")


@cli.command()
@click.option("--storage", default=None, help=STORAGE_HELP)
def studies(storage: str | None) -> None:
    """List the studies in the storage with trial counts and best values."""
    from rich.console import Console

    from .listing import studies_table
    from .storage import open_storage, resolve_url

    Console().print(studies_table(open_storage(resolve_url(storage), read_only=True)))


@cli.command()
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N trials.")
def trials(study_name: str, storage: str | None, last: int | None) -> None:
    """List a study's trials: state, value, epochs trained, duration, params."""
    from rich.console import Console

    from .exporter import load_study
    from .listing import trials_table
    from .storage import resolve_url

    Console().print(trials_table(load_study(resolve_url(storage), study_name), limit=last))


@cli.command()
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help="File to write: .yaml/.yml or .json (format by extension).")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True,
              help="Export the K best trials as OUTPUT-1 ... OUTPUT-K.")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="Also write the trial's kept weights (run --keep-best) to this new directory: from_pretrained "
                   "loads it, with its tokenizer, label names and metrics.json. With --top K: MODEL-1 ... MODEL-K.")
@click.option("--artifacts", default=None, metavar="DIR|s3://BUCKET|gs://BUCKET",
              help="Where the kept weights are, if not where the study recorded them.")
@click.option("--storage", default=None, help=STORAGE_HELP)
def export(study_name: str, output: str, top: int, model_dir: str | None, artifacts: str | None,
           storage: str | None) -> None:
    """Write the best trial's full config (same schema as a space file, nothing left to search)."""
    from .api import export as export_api

    for path in export_api(study_name, output, storage=storage, top=top, model=model_dir, artifacts=artifacts):
        click.echo(str(path))


@cli.command()
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows in the top-trials table.")
@click.option("--storage", default=None, help=STORAGE_HELP)
def report(study_name: str, output: str, top: int, storage: str | None) -> None:
    """Write a self-contained HTML report (opens offline): history, learning curves, importances, pruning savings."""
    from .exporter import load_study
    from .report import write_report
    from .storage import resolve_url

    click.echo(str(write_report(load_study(resolve_url(storage), study_name), output, top=top)))


@cli.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="A config with nothing left to search, e.g. from hpsearch export.")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="New directory for the model (from_pretrained loads it) and metrics.json.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True, help="Where to train.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--adapter-only", is_flag=True,
              help="With LoRA (lora_r > 0): save the adapter and head alone, not the merged model.")
def train(config_file: str, output_dir: str, overrides: tuple[str, ...], device: str, quiet: bool,
          adapter_only: bool) -> None:
    """Retrain one model from a config and save it with its tokenizer and metrics."""
    import json

    from .api import load_space, train as train_api
    from .training import Callback

    space = load_space(config_file, overrides)

    class _Echo(Callback):
        def on_evaluate(self, state: Any, metrics: dict[str, float]) -> None:
            if not quiet:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                click.echo(f"epoch {state.epochs_completed:.2f} step {state.step}/{state.total_steps}: {shown}",
                           err=True)

    signal.signal(signal.SIGTERM, raise_terminated)
    result = train_api(space, output_dir, device=device, progress=_Echo(), adapter_only=adapter_only)
    click.echo(json.dumps({"output_dir": output_dir, **result["metrics"]}))


@cli.command()
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the dashboard to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to listen on.")
def dashboard(storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study storage (trials, their user attributes, the study's config)."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise HpsearchError("optuna-dashboard is not installed: pip install 'hpsearch[dashboard]'") from None
    from .storage import open_storage, redact, resolve_url

    url = resolve_url(storage)
    storage_obj = open_storage(url, read_only=True)
    click.echo(f"optuna-dashboard for {redact(url)} on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    run_server(storage_obj, host=host, port=port)


@cli.command("storage-proxy")
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 serves the network (the proxy has no authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True, help="Port to listen on.")
def storage_proxy(storage: str | None, host: str, port: int) -> None:
    """Serve Optuna's gRPC storage proxy in front of a storage; workers then use --storage grpc://HOST:PORT.

    One proxy holds the database connections for hundreds of workers (Optuna's advice for large studies)."""
    from .storage import serve_proxy

    serve_proxy(storage, host, port, announce=lambda text: click.echo(text, err=True))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hpsearch")


