"""Command line: `python -m rakuten_mlops <command>` (also installed as `rakuten-mlops`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rakuten_mlops.cli.common import exits_on, log_progress, service_down
from rakuten_mlops.cli.stack import stack_app
from rakuten_mlops.cli.tools import tools_app
from rakuten_mlops.errors import ConfigurationError, LakeError, PromotionError, RakutenError
from rakuten_mlops.settings import (
    env_file,
    get_settings,
    needs_secret,
    project_root,
    render_env_file,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(stack_app, name="stack")
app.add_typer(tools_app)  # airflow, podman, ml-image: top-level commands


@app.command("init-env")
def init_env() -> None:
    """Create .env from .env.example with fresh secrets; add keys .env lacks. Never rotates."""
    target = env_file()
    template = (project_root() / ".env.example").read_text()
    rendered = render_env_file(template)
    if not target.exists():
        target.write_text(rendered)
        target.chmod(0o600)
        typer.echo(f"wrote {target} with fresh random secrets")
        return
    current = target.read_text()
    # An empty secret never worked (and compose refuses it): fill it. A `change-me` one
    # may be what local services were initialised with: only named.
    filled = current
    if any(needs_secret(line, placeholder_too=False) for line in current.splitlines()):
        filled = render_env_file(current, placeholder_too=False)
        target.write_text(filled)
        typer.echo(f"filled the empty secret(s) of {target} with fresh random ones")
    placeholders = [line.partition("=")[0] for line in filled.splitlines() if needs_secret(line)]
    if placeholders:
        typer.secho(
            f"{target}: {', '.join(placeholders)} still `change-me` (compose refuses them); "
            "set real values",
            fg="yellow",
            err=True,
        )
    present = {line.partition("=")[0].strip() for line in filled.splitlines()}
    missing = [
        line
        for line in rendered.splitlines()
        if "=" in line
        and not line.lstrip().startswith("#")
        and line.partition("=")[0].strip() not in present
    ]
    if missing:
        with target.open("a") as handle:
            handle.write("\n# added from .env.example\n" + "\n".join(missing) + "\n")
        typer.echo(f"added {len(missing)} new setting(s) to {target}")


@app.command("mlflow-auth-setup")
def mlflow_auth_setup(
    config: Annotated[Path, typer.Argument(help="Where to write the auth app's ini (0600).")],
) -> None:
    """Compose's MLflow entrypoint: the basic-auth ini and users, from the environment."""
    from rakuten_mlops.mlflow_auth import prepare_from_env

    with exits_on("mlflow-auth-setup", ConfigurationError):
        prepare_from_env(config)
    typer.echo(f"wrote {config}; MLflow users ready", err=True)


@app.command("migrate")
def migrate_command() -> None:
    """Apply the lake's pending schema migrations and the API/Grafana roles' grants.

    Run at stack start-up and by each DAG's first task; nothing else changes the schema.
    """
    from rakuten_mlops.schema import migrate_lake

    settings = get_settings()
    with service_down("migrate"):
        result = migrate_lake(settings)
    applied = ", ".join(result["applied"]) or "none (schema up to date)"
    typer.echo(f"{settings.postgres_db}: migrations applied now: {applied}; "
               f"grants for: {', '.join(result['granted']) or 'no service role yet'}")


def _migrate_first(label: str, settings) -> None:
    """CLI stages that start a pipeline (ingest, data-quality) migrate first, as their
    DAG's first task does."""
    from rakuten_mlops.schema import migrate_lake

    with service_down(label):
        migrate_lake(settings)


@app.command("ingest")
def ingest(
    slice_spec: Annotated[str | None, typer.Option(
        "--slice", help="Fraction of the source per run (0.2, 20%) or 'all'. Default: INGEST_SLICE",
    )] = None,
    run_id: Annotated[str | None, typer.Option(
        help="Batch id; re-running one finishes it or changes nothing. Default: a timestamp.",
    )] = None,
    raw_dir: Annotated[
        Path | None, typer.Option(help="Folder in the challenge layout. Default: RAW_DATA_DIR.")
    ] = None,
) -> None:
    """Load the next slice of raw_data/ into the lake (what the prepare_data DAG runs)."""
    import json

    from rakuten_mlops.ingest import IngestError, default_run_id, run_ingest

    log_progress()
    settings = get_settings()
    if raw_dir is not None:
        settings = settings.model_copy(update={"raw_data_dir": raw_dir.resolve()})
    _migrate_first("ingest failed", settings)
    with exits_on("ingest failed", IngestError), service_down("ingest failed"):
        summary = run_ingest(settings, run_id or default_run_id(), slice_spec)
    if summary.get("note"):
        typer.secho(f"ingest: {summary['note']}", fg="yellow", err=True)
    typer.echo(json.dumps(summary, indent=2))


@app.command("lake-summary")
def lake_summary_command() -> None:
    """Counts of what the data lake holds (products, labels, split, images, rejects, batches)."""
    import json

    from rakuten_mlops.ingest import lake_summary

    with service_down("lake-summary"):
        summary = lake_summary(get_settings())
    typer.echo(json.dumps(summary, indent=2))


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Default: BIND_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: API_PORT.")] = None,
) -> None:
    """Run the prediction API (what `make up` starts as the `api` service)."""
    from rakuten_mlops.serving.app import run
    from rakuten_mlops.serving.auth import MissingKeysError

    with exits_on("serve", MissingKeysError):
        run(get_settings(), host, port)


@app.command("k8s-secrets")
def k8s_secrets(
    out: Annotated[
        Path | None, typer.Option(help="Default: the production overlay's secrets.env.")
    ] = None,
) -> None:
    """The Secret's source for deploy/k8s (KEY=value lines from .env, 0600, git-ignored)."""
    from rakuten_mlops.kubernetes import SECRETS_FILE, write_secrets_file

    target = out or project_root() / SECRETS_FILE
    with exits_on("k8s-secrets", ConfigurationError):
        count = write_secrets_file(env_file(), target)
    typer.echo(f"wrote {count} secrets to {target} (mode 0600)")


@app.command("tls-cert")
def tls_cert(
    folder: Annotated[
        Path, typer.Option("--dir", help="Where to write cert.pem and key.pem.")
    ] = Path("certs"),
    host: Annotated[
        list[str] | None,
        typer.Option(help="Name or IP address it is for (repeat). Default: BIND_HOST, localhost."),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity in days.")] = 365,
    force: Annotated[bool, typer.Option(help="Replace an existing certificate.")] = False,
) -> None:
    """A self-signed certificate for the compose proxy (config/nginx; PROXY_CERT_DIR)."""
    from rakuten_mlops.proxy import CERT_FILE, write_self_signed_cert

    folder = folder if folder.is_absolute() else project_root() / folder
    if (folder / CERT_FILE).exists() and not force:
        typer.secho(f"tls-cert: {folder / CERT_FILE} exists (--force replaces it)", err=True)
        raise typer.Exit(1)
    hosts = host or list(dict.fromkeys([get_settings().bind_host, "localhost"]))
    cert, key = write_self_signed_cert(folder, hosts, days)
    typer.echo(f"wrote {cert} and {key} (0600) for {', '.join(hosts)}, valid {days} days")


@app.command("predict-batch")
def predict_batch(
    source_split: Annotated[
        str, typer.Option(help="Which challenge file's products: test (unlabelled) or train.")
    ] = "test",
    limit: Annotated[int | None, typer.Option(help="At most this many products.")] = None,
    shard_size: Annotated[
        int | None, typer.Option(min=1, help="Products per shard. Default: BATCH_SHARD_SIZE.")
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Only this shard: FIRST:LAST product ids (inclusive).")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="Add to this run (e.g. re-run one of its shards).")
    ] = None,
    chunk_size: Annotated[
        int | None, typer.Option(min=1, help="Products per commit. Default: BATCH_CHUNK_SIZE.")
    ] = None,
) -> None:
    """Classify the lake's products with the champion into batch_predictions (the
    batch_predictions DAG's code, in one process: every shard, or one)."""
    import json

    from rakuten_mlops.serving.batch import UnknownSplitError, predict_lake
    from rakuten_mlops.serving.model import ModelLoadError

    settings = get_settings()
    product_range = None
    if shard is not None:
        first, sep, last = shard.partition(":")
        if not (sep and first.strip().isdigit() and last.strip().isdigit()):
            typer.secho(f"predict-batch: --shard {shard!r} is not FIRST:LAST", fg="red", err=True)
            raise typer.Exit(2)
        product_range = [int(first), int(last)]
    log_progress()
    with exits_on("predict-batch", ModelLoadError, UnknownSplitError), \
            service_down("predict-batch"):
        summary = predict_lake(
            settings, source_split=source_split, limit=limit,
            chunk_size=chunk_size or settings.batch_chunk_size, run_id=run_id,
            shard_size=shard_size or settings.batch_shard_size, product_range=product_range,
        )
    typer.echo(json.dumps(summary, indent=2))


@app.command("demo-predict")
def demo_predict_command(
    count: Annotated[int, typer.Option(help="How many products to classify.")] = 5,
) -> None:
    """Call the running API's /predict on a few real products and print the answers."""
    from rakuten_mlops.serving.client import DemoError, demo_predict

    with exits_on("demo-predict", DemoError):
        demo_predict(get_settings(), count)


# ML stages (ml_pipeline DAGs): each reads its inputs by reference and prints, as its
# last line, the reference the next stage needs (DockerOperator pushes that to XCom).
# Each command imports its stage (MLflow, scikit-learn: seconds) inside itself, so that
# `--help` and the other commands stay fast.


@app.command("preprocess")
def preprocess_command(
    upload: Annotated[bool, typer.Option(help="Also store the snapshot in S3.")] = True,
    image_features: Annotated[bool, typer.Option(
        help="Then run the image-features stage on it (ml_pipeline_docker's container)."
    )] = False,
) -> None:
    """Freeze the lake's labelled products and split as a dataset version; print its id."""
    from rakuten_mlops.ml.dataset import prepare_dataset

    with exits_on("preprocess", LakeError), service_down("preprocess"):
        dataset = prepare_dataset(get_settings(), upload=upload)
    manifest = dataset.manifest
    where = manifest.get("s3_uri") or manifest["local_path"]
    typer.echo(
        f"dataset {manifest['dataset_id']}: {manifest['rows']} rows {manifest['subsets']}, "
        f"batches {manifest['load_batches']}, {where}",
        err=True,
    )
    if image_features:  # it prints the dataset id last too
        image_features_command(manifest["dataset_id"])
    else:
        typer.echo(manifest["dataset_id"])


@app.command("image-features")
def image_features_command(
    dataset_id: Annotated[str, typer.Option(help="Dataset version from `preprocess`.")],
) -> None:
    """Describe the dataset's product images not cached yet (by sha256); print its id."""
    from mlflow.exceptions import MlflowException

    from rakuten_mlops.ml.image_stage import run_image_features

    log_progress()
    with exits_on("image-features", RakutenError, MlflowException), \
            service_down("image-features"):
        run_image_features(get_settings(), dataset_id,
                           report=lambda line: typer.echo(line, err=True))
    typer.echo(dataset_id)


@app.command("train")
def train_command(
    dataset_id: Annotated[str, typer.Option(help="Dataset version from `preprocess`.")],
    profile: Annotated[
        str | None, typer.Option(help="quick, full, or a YAML path (default: TRAINING_PROFILE).")
    ] = None,
    family: Annotated[
        list[str] | None, typer.Option(help="Search only this family (repeatable).")
    ] = None,
) -> None:
    """Search every family, refit the best, log all to MLflow; print the run id."""
    from mlflow.exceptions import MlflowException

    from rakuten_mlops.ml.stages import run_train

    # An unknown profile or family, a bad profile, an unknown dataset, MLflow unreachable.
    with exits_on("train", RakutenError, MlflowException), service_down("train"):
        run_id = run_train(get_settings(), dataset_id, profile, families=family or None,
                           report=lambda line: typer.echo(line, err=True))
    typer.echo(run_id)


@app.command("evaluate")
def evaluate_command(
    run_id: Annotated[str, typer.Option(help="MLflow run id from `train`.")],
    baseline: Annotated[
        bool | None, typer.Option(help="Also score the plain TF-IDF + LinearSVC baseline.")
    ] = None,
) -> None:
    """Score the run's logged model once on the test split; log and print the metrics."""
    import json

    from mlflow.exceptions import MlflowException

    from rakuten_mlops.ml.stages import run_evaluate

    with exits_on("evaluate", RakutenError, MlflowException), service_down("evaluate"):
        metrics = run_evaluate(get_settings(), run_id, baseline=baseline,
                               report=lambda line: typer.echo(line, err=True))
    typer.echo(json.dumps(metrics, sort_keys=True))


@app.command("promote")
def promote_command(
    run_id: Annotated[str, typer.Option(help="MLflow run id, evaluated.")],
    export: Annotated[bool, typer.Option(help="Export a new champion to models/.")] = True,
) -> None:
    """Register the run's model; alias champion only if it beats the champion, else challenger."""
    import json

    from mlflow.exceptions import MlflowException

    from rakuten_mlops.ml.stages import promote

    with exits_on("promote", RakutenError, MlflowException), service_down("promote"):
        result = promote(get_settings(), run_id, export=export)
    typer.echo(result.reason, err=True)
    typer.echo(json.dumps(result.as_dict(), sort_keys=True))


@app.command("export-model")
def export_model_command() -> None:
    """Write the registry's champion to models/ (joblib + metadata JSON)."""
    from mlflow.exceptions import MlflowException

    from rakuten_mlops.ml.stages import export_champion

    with exits_on("export-model", PromotionError, MlflowException):
        path = export_champion(get_settings())
    typer.echo(str(path))


@app.command("data-quality")
def data_quality_command(
    date: Annotated[str | None, typer.Option(
        help="Day to check (YYYY-MM-DD, a UTC day), or the 24 hours from an ISO time with "
        "an offset (2025-02-03T00:00+01:00): its load batches and inference log, like the "
        "data_quality DAG run of that date. Default: today (UTC) so far.",
    )] = None,
) -> None:
    """Drift and quality of new load batches and the day's predictions (the data_quality DAG)."""
    from datetime import UTC, datetime

    from rakuten_mlops.quality.errors import QualityError
    from rakuten_mlops.quality.windows import interval_of

    with exits_on("data-quality", QualityError):
        start, end = interval_of(date, datetime.now(UTC))
    # After the date check: the job's imports (pandas, scipy, MLflow) take seconds.
    from rakuten_mlops.quality.job import run
    from rakuten_mlops.quality.results import to_json

    log_progress()
    _migrate_first("data-quality", get_settings())
    with exits_on("data-quality", QualityError), service_down("data-quality"):
        run_id = f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S}"
        summary = run(get_settings(), start, end, dag_run_id=run_id)
    typer.echo(to_json(summary))


@app.command("quality-summary")
def quality_summary_command() -> None:
    """The last data-quality run's windows, and where to see their reports (make demo)."""
    # Here, not at the top: the quality package imports pandas (seconds for every command).
    from rakuten_mlops.quality.store import latest_run, window_summaries

    settings = get_settings()
    with service_down("quality-summary"):
        run_id = latest_run(settings)
        windows = window_summaries(settings, run_id) if run_id else []
    typer.echo(f"data quality, run {run_id or 'none yet'}:")
    for window in windows:
        breached = ", ".join(window["breached_features"]) or "no breach"
        typer.echo(f"  {window['window_id']}: {window['status']} ({window['rows']} rows),"
                   f" {breached}")
    host = settings.bind_host
    typer.echo(
        f"reports: the control room http://{host}:{settings.control_room_port}/quality"
        f" (user CONTROL_ROOM_USER, password CONTROL_ROOM_PASSWORD in {env_file()})\n"
        f"runs and task logs: Airflow http://{host}:{settings.airflow_port}/dags/data_quality"
        " (user AIRFLOW_ADMIN_USER, password AIRFLOW_ADMIN_PASSWORD)"
    )


@app.command("publish-dashboards")
def publish_dashboards_command(
    url: Annotated[str | None, typer.Option(help="Grafana URL. Default: GRAFANA_URL.")] = None,
    folder: Annotated[str, typer.Option(help="Folder to put them in (created).")] = "Rakuten MLOps",
    lake_datasource: Annotated[str, typer.Option(
        help="uid of that Grafana's PostgreSQL datasource for the lake.")] = "lake",
    prometheus_datasource: Annotated[str, typer.Option(
        help="uid of that Grafana's Prometheus datasource.")] = "prometheus",
) -> None:
    """Push config/grafana/dashboards/*.json to an existing Grafana (grafana-client)."""
    from rakuten_mlops.ops.dashboards import PublishError, publish

    with exits_on("publish-dashboards", PublishError):
        published = publish(get_settings(), url=url, folder=folder,
                            datasources={"lake": lake_datasource,
                                         "prometheus": prometheus_datasource},
                            report=typer.echo)
    typer.echo(f"published {len(published)} dashboard(s)")


@app.command("champion")
def champion_command() -> None:
    """Print the registered champion: version, family, test metrics and its MLflow page."""
    from mlflow.exceptions import MlflowException

    from rakuten_mlops.failures import describe_mlflow
    from rakuten_mlops.ml.registry import champion_summary

    settings = get_settings()
    with exits_on("champion", PromotionError):
        try:
            summary = champion_summary(settings)
        except MlflowException as exc:
            typer.secho(f"champion: {describe_mlflow(exc, settings.tracking_uri)}", fg="red",
                        err=True)
            raise typer.Exit(1) from exc
    for key, value in summary.items():
        typer.echo(f"  {key:<28} {value}")


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="rakuten-mlops")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
