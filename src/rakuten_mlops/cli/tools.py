"""`rakuten-mlops airflow|podman|ml-image`: the tools local mode runs, with its configuration."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rakuten_mlops.settings import get_settings

tools_app = typer.Typer()


@tools_app.command(
    "airflow",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def airflow(ctx: typer.Context) -> None:
    """Run the `airflow` CLI with local mode's configuration, e.g. `airflow dags list`."""
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    os.environ.update(airflow_env(get_settings()))
    binary = str(Path(venv_bin()) / "airflow")
    os.execv(binary, [binary, *with_task_logs(ctx.args)])


def with_task_logs(args: list[str]) -> list[str]:
    """`dags test` with `--use-executor` (Airflow's own flag): without it the tasks run
    in-process and log to the terminal only, so the Airflow UI shows no task log for
    the run; through the LocalExecutor each task writes its log file, as scheduled
    runs do."""
    if args[:2] == ["dags", "test"] and "--use-executor" not in args:
        return [*args, "--use-executor"]
    return args


@tools_app.command(
    "podman",
    # --help too is podman's (`rakuten-mlops podman run --help`).
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def podman(ctx: typer.Context) -> None:
    """Run `podman` on local mode's own storage and engine config, e.g. `podman images`."""
    import shutil

    from rakuten_mlops.localstack.podman import podman_command, podman_env, prepare_podman_dir

    if not shutil.which("podman"):
        raise typer.BadParameter("podman is not installed: run `make setup`")
    settings = get_settings()
    prepare_podman_dir(settings)
    os.environ.update(podman_env(settings))
    command = podman_command(settings)
    os.execv(command[0], [*command, *ctx.args])


@tools_app.command("ml-image")
def ml_image(
    tag: Annotated[str, typer.Option(help="the image's tag")] = "rakuten-mlops/ml:latest",
    no_cache: Annotated[bool, typer.Option(help="rebuild every layer")] = False,
) -> None:
    """Build the ML image (Dockerfile target `ml`) with this machine's engine."""
    import time

    from rakuten_mlops.localstack.podman import build_ml_image

    started = time.monotonic()
    result = build_ml_image(get_settings(), tag, no_cache=no_cache)
    if result.returncode != 0:
        print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
        print(f"error: the ML image build failed (exit {result.returncode})", file=sys.stderr)
        raise typer.Exit(1)
    print(f"built {tag} in {time.monotonic() - started:.0f} s")
