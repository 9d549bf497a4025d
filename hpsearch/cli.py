"""The command line: parse, call, print. Nothing heavy is imported until a command runs.

Exit codes: 0 success; 1 a runtime failure (storage unreachable, a model that will not load);
2 bad usage or a bad config (nothing written); 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import signal
from typing import Any

import click

from .config.options import DEVICE, Option, RunOptions, flag_names
from .errors import MISSING, HpsearchError, exit_status
from .interrupts import raise_terminated

STORAGE_HELP = dict(RunOptions.fields())["storage"].help
SET_HELP = ("Override a config key: dotted KEY=VALUE, repeatable (e.g. --set fixed.epochs=1). VALUE is YAML; "
            "null removes.")


def click_option(name: str, spec: Option) -> Any:
    """The click option (a decorator) for an :class:`~hpsearch.config.options.Option`: its flag, help, bounds,
    default and check, so that the command line takes what the API takes."""
    default = spec.cli_default
    if default is MISSING:
        field = RunOptions.__dataclass_fields__.get(name)
        default = field.default if field is not None else None
    kwargs: dict[str, Any] = {"help": spec.help, "default": default, "metavar": spec.metavar}
    if spec.kind is bool:
        return click.option(spec.flag, name, is_flag=True, help=spec.help, default=default)
    if spec.kind in (int, float):
        kwargs["type"] = _Number(spec.kind)
    elif spec.kind is tuple:
        kwargs["callback"] = lambda ctx, param, value: (None if value is None else
                                                        tuple(v.strip() for v in value.split(",") if v.strip()))
    if spec.flag_value is not MISSING:
        kwargs.update(is_flag=False, flag_value=spec.flag_value)
    if default is not None:
        kwargs["show_default"] = True
    return click.option(spec.flag, name, **kwargs)


class _Number(click.ParamType):
    """An int or float flag's value, converted where it can be and otherwise passed on as given: RunOptions checks
    every option (kind, bound, check) and names every bad one at once, as the Python API does."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.name = "integer" if kind is int else "float"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.kind(value)
        except ValueError:
            return value


def _with_options(options: list[Any]) -> Any:
    """Apply click option decorators so that ``--help`` lists them in the order given."""
    def decorate(f: Any) -> Any:
        for add in reversed(options):
            f = add(f)
        return f

    return decorate


class _Group(click.Group):
    """Turns HpsearchError into a short message on stderr and its exit code, never a traceback; messages name
    options by their flags."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with flag_names():
                return super().invoke(ctx)
        except (HpsearchError, KeyboardInterrupt) as exc:
            code, line = exit_status(exc)
            click.echo(line, err=True)
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


@cli.command()
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False), help="Search-space YAML file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def validate(space_file: str, overrides: tuple[str, ...]) -> None:
    """Check a space file (every problem at once) without running anything. Needs no torch and no download."""
    from .config.load import load_space

    space = load_space(space_file, overrides)
    n = len(space.params)
    study = space.study
    goals = ", ".join(f"{d} {m}" for d, m in zip(study.all_directions, study.objectives))
    when = space.when
    conditional = f" ({len(when)} conditional: {', '.join(when)})" if when else ""
    click.echo(f"{space_file}: OK, study {space.name!r}, {goals}, "
               f"{n} searched param{'s' if n != 1 else ''} ({', '.join(space.params) or 'none'}){conditional}, "
               f"sampler {study.sampler.name}, pruner {study.pruner.name}")


@cli.command()
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False), help="Search-space YAML file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@_with_options([click_option(name, spec) for name, spec in RunOptions.fields()])
def run(space_file: str, overrides: tuple[str, ...], **flags: Any) -> None:
    """Run trials of a search space into a (new or resumed) study."""
    from .api import run as run_api
    from .study.storage import redact, resolve_url

    signal.signal(signal.SIGTERM, raise_terminated)
    study = run_api(space_file, overrides=overrides, **flags)
    if study is not None:  # None: a rank of a trial group other than 0, which never opens the study
        _print_best(study, redact(resolve_url(flags["storage"])))


def _print_best(study: Any, where: str) -> None:
    from .study import record
    from .study.progress import fmt_params

    counts = record.state_counts(study)
    click.echo(f"study {study.study_name} in {where}: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    ranked = record.ranked_trials(study)
    if not ranked:
        click.echo("no completed trial yet")
        return
    best, metric = ranked[0], record.study_metric(study)
    if record.is_multi(study):
        names = record.objectives(study)
        click.echo(f"Pareto front: {len(ranked)} trial(s) ({', '.join(names)})")
        for t in ranked:
            shown = ", ".join(f"{n}={v:.4f}" for n, v in zip(names, t.values))
            click.echo(f"  trial {t.number}: {shown}  {fmt_params(t.params)}")
        return
    confirmed = record.confirmation(study, best.number)
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

    from .outputs.listing import studies_table
    from .study.storage import open_storage, resolve_url

    Console().print(studies_table(open_storage(resolve_url(storage), read_only=True)))


@cli.command()
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N trials.")
def trials(study_name: str, storage: str | None, last: int | None) -> None:
    """List a study's trials: state, value, epochs trained, duration, params."""
    from rich.console import Console

    from .outputs.listing import trials_table
    from .study.storage import load_study, resolve_url

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
@click.option("--pareto", is_flag=True,
              help="A multi-objective study (study.metrics): one config per Pareto-front trial, OUTPUT-1 ... OUTPUT-K.")
@click.option("--storage", default=None, help=STORAGE_HELP)
def export(study_name: str, output: str, top: int, model_dir: str | None, artifacts: str | None, pareto: bool,
           storage: str | None) -> None:
    """Write the best trial's full config (same schema as a space file, nothing left to search)."""
    from .api import export as export_api

    for path in export_api(study_name, output, storage=storage, top=top, model=model_dir, artifacts=artifacts,
                           pareto=pareto):
        click.echo(str(path))


@cli.command()
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows in the top-trials table.")
@click.option("--storage", default=None, help=STORAGE_HELP)
def report(study_name: str, output: str, top: int, storage: str | None) -> None:
    """Write a self-contained HTML report (opens offline): history, learning curves, importances, pruning savings."""
    from .outputs.report import write_report
    from .study.storage import load_study, resolve_url

    click.echo(str(write_report(load_study(resolve_url(storage), study_name), output, top=top)))


@cli.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="A config with nothing left to search, e.g. from hpsearch export.")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="New directory for the model (from_pretrained loads it) and metrics.json.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@_with_options([click_option("device", DEVICE)])
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--adapter-only", is_flag=True,
              help="With LoRA (lora_r > 0): save the adapter and head alone, not the merged model.")
def train(config_file: str, output_dir: str, overrides: tuple[str, ...], device: str, quiet: bool,
          adapter_only: bool) -> None:
    """Retrain one model from a config and save it with its tokenizer and metrics."""
    import json

    from .api import load_space
    from .api import train as train_api
    from .finetune.loop import Callback

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
    from .study.storage import open_storage, redact, resolve_url

    url = resolve_url(storage)
    storage_obj = open_storage(url, read_only=True)
    click.echo(f"optuna-dashboard for {redact(url)} on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    run_server(storage_obj, host=host, port=port)


@cli.command()
@click.option("--storage", default=None, help=STORAGE_HELP)
def repair(storage: str | None) -> None:
    """Mend a journal file a crash or a full disk tore in the middle: its unreadable lines are moved aside (into
    FILE.torn), whole records appended onto them kept; the studies open again."""
    from .api import repair as repair_api

    click.echo(repair_api(storage))


@cli.command("storage-proxy")
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 serves the network (the proxy has no authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True, help="Port to listen on.")
def storage_proxy(storage: str | None, host: str, port: int) -> None:
    """Serve Optuna's gRPC storage proxy in front of a storage; workers then use --storage grpc://HOST:PORT.

    One proxy holds the database connections for hundreds of workers (Optuna's advice for large studies)."""
    from .study.storage import serve_proxy

    serve_proxy(storage, host, port, announce=lambda text: click.echo(text, err=True))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hpsearch")


