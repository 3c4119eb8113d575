"""One settings object for the whole project.

Every path, URI, bucket, port and credential lives here. Values come from environment variables with the
``UKR_HW_`` prefix, then from a ``.env`` file in the working directory, then from the defaults below. The
defaults are the *embedded* setup: no servers at all (MLflow and Optuna on local SQLite files, a local folder in
place of S3, Prefect's embedded API). Point the URIs at servers to run against the stack (see ``.env.example``).

Relative paths are resolved against ``root`` (the repo root by default: the current working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Handwriting-like fonts (and italic/cursive text faces) with Cyrillic incl. Ґ Є І Ї; packages in deploy/fonts.txt.
DEFAULT_FONT_INCLUDE: tuple[str, ...] = (
    "SteveHand",
    "setofont",
    "kiloji*",
    "KleeOne-*",
    "Andika-*",
    "FantasqueSansMono-*",
    "monof5?",
    "Comfortaa-*",
    "cmunti",
    "cmunci",
    "cmunui",
    "PTS56F",
    "PTF56F",
    "DejaVuSans-Oblique",
    "DejaVuSerif-Italic",
    "LiberationSans-Italic",
    "LiberationSerif-Italic",
    "GentiumPlus-Italic",
    "LinBiolinum_RI",
    "LinLibertine_RI",
    "Z003-MediumItalic",
    "URWBookman-LightItalic",
    "OldStandard-Italic",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UKR_HW_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- where things live -------------------------------------------------------------------------------
    root: Path = Field(default_factory=Path.cwd, description="Project root; relative paths resolve here.")
    data_dir: Path = Path("data")
    data_mirror: Path | None = Field(
        default=None, description="Local folder laid out like shared/datasets; when unset, ingest downloads."
    )

    # --- upstream sources (used when no mirror is set) ---------------------------------------------------
    rukopys_repo: str = "lynnporu/rukopys-dataset"
    rukopys_commit: str = "d02f11f"
    rukopys_archive_url: str = Field(
        "https://codeload.github.com/{repo}/tar.gz/{commit}", description="Rukopys tarball URL template."
    )
    mnist_base_url: str = "https://storage.googleapis.com/cvdf-datasets/mnist/"
    comnist_repo: str = "absoluteteam/ocr"
    comnist_commit: str = "9de5014db80db53b42b8d2edb49db5c1dd446b7a"
    comnist_archive_url: str = Field(
        "https://codeload.github.com/{repo}/tar.gz/{commit}", description="CoMNIST (Cyrillic/) tarball URL template."
    )

    # --- data preparation ---------------------------------------------------------------------------------
    mnist_per_class: int = Field(50, ge=0, description="MNIST digits per class joining the fine-tune set.")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    font_glyphs: bool = Field(True, description="Render extra training glyphs from handwriting-style fonts.")
    stroke_glyphs: int = Field(
        8,
        ge=0,
        description="Sketchpad-style drawings per symbol × case rendered as extra training data (0 = none).",
    )
    stroke_cursive_glyphs: int = Field(
        4,
        ge=0,
        description="More drawings per symbol × case in its cursive (пропис) forms, where it has them (0 = none).",
    )
    mnist_limit: int | None = Field(None, ge=1, description="Cap the full MNIST train/test arrays (fast tests).")
    prep_workers: int = Field(2, ge=1, description="Processes for glyph/MNIST preprocessing.")
    frozen_test_ids: Path = Field(
        Path("configs/frozen_test_ids.txt"), description="The frozen fine-tune test split (ids), kept in git."
    )
    comnist: bool = Field(True, description="Ingest CoMNIST (browser drawings by many writers) as a raw source.")
    comnist_limit: int | None = Field(
        None, ge=1, description="Take at most this many CoMNIST sessions (oldest first; fast tests)."
    )
    comnist_frozen_test_ids: Path = Field(
        Path("configs/frozen_test_ids_comnist.txt"),
        description="The CoMNIST part of the frozen test split: whole drawing sessions (ids), kept in git.",
    )
    font_dirs: list[Path] = [Path("/usr/share/fonts")]
    font_variants: int = Field(3, ge=1, description="Rendered variants per font × symbol × case.")
    font_include: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FONT_INCLUDE),
        description="Font file stems (globs) to render from; ['*'] = every font that covers the alphabet.",
    )
    font_exclude: list[str] = Field(default_factory=list, description="Font file stems (globs) held out.")
    font_min_coverage: float = Field(
        0.85, ge=0, le=1, description="Fonts must draw at least this share of the 76 glyphs (missing ones skipped)."
    )

    # --- DVC ----------------------------------------------------------------------------------------------
    dvc_remote_url: str = Field(".dvc-storage", description="Local folder or s3://bucket/prefix.")
    dvc_remote_endpoint_url: str | None = None
    dvc_push: bool = True

    # --- MLflow / registry ---------------------------------------------------------------------------------
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_artifact_root: str = Field("mlartifacts", description="Used only with a local (non-server) store.")
    mlflow_experiment: str = "ukr-hw"
    model_name: str = "ukr-hw"
    champion_alias: str = "champion"
    promotion_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="The promotion gate's significance level: a population whose one-sided paired (McNemar) test "
        "says the new model is worse at p < this refuses it.",
    )

    # --- training --------------------------------------------------------------------------------------------
    cache_dir: Path = Field(Path("data/cache"), description="Pretrained weights keyed by data + config hash.")
    reports_dir: Path = Field(Path("data/reports"), description="metrics.json / per_class.csv for dvc.yaml.")
    torch_threads: int = Field(2, ge=1, description="torch CPU threads for training.")

    # --- Optuna ---------------------------------------------------------------------------------------------
    optuna_storage: str = "sqlite:///optuna.db"

    # --- feedback store (S3 or a local folder) --------------------------------------------------------------
    feedback_uri: str = Field("data/feedback", description="Local folder, or s3://bucket[/prefix].")
    feedback_spool_dir: Path = Path("data/feedback-spool")
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"

    # --- serving ----------------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 3000
    api_url: str = "http://127.0.0.1:3000"
    admin_token: SecretStr | None = Field(default=None, description="Bearer token for POST /admin/reload.")
    admin_token_file: Path = Field(
        Path(".ukr-hw/admin-token"),
        description="Without UKR_HW_ADMIN_TOKEN, `ukr-hw serve` keeps a generated token here (mode 0600), so that "
        "`ukr-hw retrain` and `ukr-hw promote` on this machine can ask the API to reload.",
    )
    max_upload_bytes: int = 5 * 1024 * 1024
    max_image_side: int = 4096
    max_batch_images: int = 64
    reload_interval_s: float = 30.0
    max_batch_upload_bytes: int = Field(32 * 1024 * 1024, description="Cap on one /classify_batch request body.")
    serve_workers: int = Field(2, ge=1, description="BentoML API worker processes (decode + preprocess).")
    serve_torch_threads: int = Field(1, ge=1, description="torch threads in the model worker (batched predict).")
    serve_max_batch_size: int = Field(64, ge=1, description="Adaptive batching: most glyphs per model call.")
    serve_access_log: bool = Field(
        True, description="One log line per API request (BentoML's access log); off saves ~0.3 ms CPU per request."
    )
    serve_max_latency_ms: int = Field(
        1000,
        ge=1,
        description="Adaptive batching: BentoML sheds (503) requests it expects to miss this budget; keep it well "
        "above one full batch's time on the CPU (20 ms shed a third of the requests at 8+ clients).",
    )

    # --- UI -----------------------------------------------------------------------------------------------
    ui_host: str = "127.0.0.1"
    ui_port: int = 7860
    ui_trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of reverse proxies in front of the sketchpad whose X-Forwarded-For "
        'is believed, as JSON (e.g. ["10.0.0.0/8"]); empty: the connecting address is the source, X-Forwarded-For is '
        "ignored.",
    )
    ui_saves_per_address: int = Field(
        30, ge=0, description="Confirmations + corrections one source address may save per ui_saves_window_s (0: none)."
    )
    ui_saves_per_session: int = Field(
        20,
        ge=0,
        description="Confirmations + corrections one browser session may save per ui_saves_window_s (0: none).",
    )
    ui_saves_window_s: float = Field(600.0, gt=0, description="The window of the two save limits, in seconds.")
    ui_predicts_per_address: int = Field(
        120,
        ge=0,
        description="Recognitions (/predict) one source address may ask for per ui_predicts_window_s (0: none).",
    )
    ui_predicts_window_s: float = Field(60.0, gt=0, description="The window of the recognition limit, in seconds.")
    ui_source_salt: SecretStr | None = Field(
        default=None,
        description="Salt of the source-address hash stored with each sample (`source`); unset: a random one kept in "
        "ui_source_salt_file.",
    )
    ui_source_salt_file: Path = Field(
        Path(".ukr-hw/source-salt"), description="Where the generated salt is kept (mode 0600) without ui_source_salt."
    )
    ui_max_file_bytes: int = Field(
        5 * 1024 * 1024, ge=1, description="Largest file the sketchpad's upload route accepts (Gradio max_file_size)."
    )
    ui_queue_max_size: int = Field(64, ge=1, description="Events the sketchpad's queue holds; beyond it: 'queue full'.")
    ui_concurrency_limit: int = Field(8, ge=1, description="Events of one kind the sketchpad runs at once.")
    ui_spool_flush_interval_s: float = Field(
        10.0, gt=0, description="How often the sketchpad tries to upload spooled samples while S3 is up."
    )
    ui_spool_flush_max_backoff_s: float = Field(
        300.0, gt=0, description="Longest wait between upload tries while S3 stays down (the wait doubles up to it)."
    )

    # --- native stack (`ukr-hw stack`) and PostgreSQL -------------------------------------------------------
    postgres_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        description="Admin connection used to create the stack's databases (and the tests' throwaway ones).",
    )
    stack_dir: Path = Field(Path(".stack"), description="Pids, logs, data and the env file of `ukr-hw stack`.")
    stack_host: str = "127.0.0.1"
    code_dir: Path | None = Field(
        default=None,
        description="Checkout the Prefect worker runs flows from (prefect.yaml pull step); None: the package's repo.",
    )
    s3_port: int = 8333
    mlflow_port: int = 5000
    prefect_port: int = 4200
    mlflow_database: str = "ukr_hw_mlflow"
    prefect_database: str = "ukr_hw_prefect"
    mlflow_bucket: str = "mlflow"
    feedback_bucket: str = "feedback"
    dvc_bucket: str = "dvc"
    prefect_work_pool: str = "ukr-hw-process"

    # --- retraining on feedback (`ukr-hw retrain`) ------------------------------------------------------------
    lineage_db: str = Field(
        "sqlite:///lineage.db", description="SQLAlchemy URL of the lineage tables (samples ↔ data ↔ model versions)."
    )
    user_test_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of feedback held out (by sample-id hash) as the 'user drawings' test set."
    )
    retrain_config: Path = Field(Path("configs/train.yaml"), description="Training config the retrain fine-tunes with.")
    retrain_min_samples: int = Field(1, ge=1, description="Fewer new valid samples than this: no retraining.")
    retrain_max_source_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Most of one retrain's new samples one source (salted sender address) may give; the rest wait.",
    )
    retrain_source_min_samples: int = Field(
        20, ge=0, description="Samples a source may always give one retrain, whatever its share (one-user setups)."
    )

    @field_validator("data_mirror", "mnist_limit", "comnist_limit", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v in ("", None) else v

    def resolved_admin_token(self) -> str | None:
        """The admin token: ``admin_token`` when set, else the one ``ukr-hw serve`` keeps in ``admin_token_file``."""
        if self.admin_token:
            return self.admin_token.get_secret_value()
        try:
            return self.path(self.admin_token_file).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def ensure_admin_token(self) -> str:
        """:meth:`resolved_admin_token`, generating and keeping a random one (owner-only file) if there is none."""
        import secrets

        token = self.resolved_admin_token()
        if token:
            return token
        path = self.path(self.admin_token_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        return token

    def path(self, p: Path | str) -> Path:
        """Resolve ``p`` against ``root`` unless it is absolute."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.root / p)

    @property
    def raw_dir(self) -> Path:
        return self.path(self.data_dir) / "raw"

    @property
    def processed_dir(self) -> Path:
        return self.path(self.data_dir) / "processed"

    def _resolve_sqlite(self, uri: str) -> str:
        """A relative ``sqlite:///file`` made absolute against ``root``; other URIs unchanged."""
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + str(self.path(uri[len(prefix) :]))
        return uri

    def resolved_tracking_uri(self) -> str:
        """MLflow tracking URI, a relative SQLite file resolved against ``root``."""
        return self._resolve_sqlite(self.mlflow_tracking_uri)

    def resolved_optuna_storage(self) -> str:
        """Optuna RDB storage URL, a relative SQLite file resolved against ``root``."""
        return self._resolve_sqlite(self.optuna_storage)

    def resolved_lineage_db(self) -> str:
        """Lineage database URL, a relative SQLite file resolved against ``root``."""
        return self._resolve_sqlite(self.lineage_db)


def get_settings(**overrides: object) -> Settings:
    """A fresh settings object (cheap; read each time so tests and flows can change the environment)."""
    return Settings(**overrides)  # type: ignore[arg-type]
