"""The command line: parse, call, print. Nothing heavy is imported until a command runs.

Exit codes: 0 success; 1 a runtime failure (storage unreachable, a model that will not load);
2 bad usage or a bad config (nothing written); 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import signal
import sys
from typing import Any

import click

from .errors import HpsearchError

STORAGE_HELP = "SQLAlchemy URL of the study database. Default: $HPSEARCH_STORAGE, else sqlite:///studies.db."
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so that Optuna marks the running trial FAIL as it does for Ctrl-C."""


def _sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


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
    from .space import load_space

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
@click.option("--trials", "n_trials", required=True, type=click.IntRange(min=1),
              help="Trials to run in THIS invocation; re-running the command resumes the study and adds N more.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--study-name", default=None, help="Study name. Default: study.name in the space file (or its stem).")
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True,
              help="Where trials train: the GPU when there is one (auto), or force cpu / cuda.")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Stop starting new trials after SECONDS.")
@click.option("--quiet", is_flag=True, help="Plain log lines instead of the live view.")
def run(space_file: str, n_trials: int, overrides: tuple[str, ...], storage: str | None, study_name: str | None,
        device: str, timeout: float | None, quiet: bool) -> None:
    """Run N trials of a search space into a (new or resumed) study."""
    from .storage import redact, resolve_url

    space = _load(space_file, overrides)
    url = resolve_url(storage)
    from .runner import run_study

    signal.signal(signal.SIGTERM, _sigterm)
    study = run_study(space, storage_url=url, n_trials=n_trials, study_name=study_name, device=device, quiet=quiet,
                      timeout=timeout)
    _print_best(study, redact(url))


def _print_best(study: Any, where: str) -> None:
    from .progress import fmt_params

    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    click.echo(f"study {study.study_name} in {where}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    try:
        best = study.best_trial
    except ValueError:
        click.echo("no completed trial yet")
        return
    metric = study.user_attrs.get("metric", "value")
    click.echo(f"best trial {best.number}: {metric}={best.value:.4f}  {fmt_params(best.params)}")


@cli.command()
@click.option("--storage", default=None, help=STORAGE_HELP)
def studies(storage: str | None) -> None:
    """List the studies in the storage with trial counts and best values."""
    from rich.console import Console

    from .listing import studies_table
    from .storage import open_storage, resolve_url

    Console().print(studies_table(open_storage(resolve_url(storage), heartbeat_interval=None)))


@cli.command()
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N trials.")
def trials(study_name: str, storage: str | None, last: int | None) -> None:
    """List a study's trials: state, value, epochs trained, duration, params."""
    from rich.console import Console

    from .export import load_study
    from .listing import trials_table
    from .storage import resolve_url

    Console().print(trials_table(load_study(resolve_url(storage), study_name), limit=last))


@cli.command()
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help="File to write: .yaml/.yml or .json (format by extension).")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True,
              help="Export the K best trials as OUTPUT-1 ... OUTPUT-K.")
@click.option("--storage", default=None, help=STORAGE_HELP)
def export(study_name: str, output: str, top: int, storage: str | None) -> None:
    """Write the best trial's full config (same schema as a space file, nothing left to search)."""
    from .export import export as do_export
    from .storage import resolve_url

    for path in do_export(resolve_url(storage), study_name, output, top=top):
        click.echo(str(path))


@cli.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="A config with nothing left to search, e.g. from hpsearch export.")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="New directory for the model (from_pretrained loads it) and metrics.json.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True, help="Where to train.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def train(config_file: str, output_dir: str, overrides: tuple[str, ...], device: str, quiet: bool) -> None:
    """Retrain one model from a config and save it with its tokenizer and metrics."""
    import json

    from .retrain import retrain
    from .training import Callback

    space = _load(config_file, overrides)

    class _Echo(Callback):
        def on_evaluate(self, state: Any, metrics: dict[str, float]) -> None:
            if not quiet:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                click.echo(f"epoch {state.epochs_completed:.2f} step {state.step}/{state.total_steps}: {shown}",
                           err=True)

    signal.signal(signal.SIGTERM, _sigterm)
    result = retrain(space, output_dir, device=device, progress=_Echo())
    click.echo(json.dumps({"output_dir": output_dir, **result["metrics"]}))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hpsearch")


