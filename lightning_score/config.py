"""Experiment configuration: a typed OmegaConf schema, YAML files and dotlist overrides.

:func:`read_config` merges, in order: the schema defaults, the YAML file (after the files its
``base:`` entry names, recursively), and ``key=value`` overrides (the form W&B agents pass with
``${args_no_hyphens}``). Unknown keys and wrong types fail here with one line that names the key
and the fix. This module imports nothing else of the package: each part checks its own section
(``sde.validate_sde_config``, ``losses.validate_loss_config`` ...), and
``lightning_score.experiment`` runs those checks at load, before any data is read. The sections
that belong to the run as a whole (trainer, checkpoints, grids, evaluation, logger) are checked
here by :func:`check_run_sections`.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, ValidationError

#: ``trainer.compile`` values: no compilation, or a ``torch.compile`` mode
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class ConfigError(ValueError):
    """A configuration problem that the user fixes in the YAML or on the command line."""


@dataclass
class SDEConfig:
    name: str = "vesde"  # vesde | vpsde | subvpsde | edm
    # VE and EDM noise range; None: the SDE's default (VE 0.01 / 50, EDM 0.002 / 80)
    sigma_min: float | None = None
    sigma_max: float | None = None
    beta_min: float = 0.1  # VP and sub-VP
    beta_max: float = 20.0
    N: int = 1000  # discretization steps (VP's network timestep is (N - 1) t)


@dataclass
class ModelConfig:
    name: str = "unet"  # a key of lightning_score.nets.NETWORKS
    # ve | vp | edm | auto (the SDE's own: vesde -> ve, vpsde/subvpsde -> vp, edm -> edm)
    parameterization: str = "auto"
    sigma_data: float = 0.5  # data std for EDM's preconditioning and loss weighting
    # class-conditional network (labels from the data set; 0: unconditional) and the fraction of
    # training labels replaced by "no class" (classifier-free guidance's p_uncond)
    num_classes: int = 0
    label_dropout: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    # sigma2 | likelihood | none | edm | auto (the parameterization's: sigma2; edm for EDM)
    weighting: str = "auto"
    # uniform | importance | lognormal | auto (the parameterization's: uniform; lognormal for EDM)
    time_sampler: str = "auto"
    # over data dimensions: mean | sum | half_sum (0.5 x sum, the official reduce_mean=False)
    reduce: str = "mean"
    eps: float | None = None  # smallest training time; None: the SDE's (1e-5; EDM: sigma_min)
    p_mean: float = -1.2  # lognormal sampler: ln sigma ~ N(p_mean, p_std^2) (EDM)
    p_std: float = 1.2
    t_bins: int = 10  # bins of t for the per-time loss log


@dataclass
class OptimConfig:
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 5000
    # Adam's fused kernel (CUDA, CPU): one launch per step for all parameters, and the non-finite
    # guard can drop a bad update on the device without a host-device sync. Falls back to the
    # multi-tensor kernel where the device has no fused one.
    fused: bool = True


@dataclass
class EMAConfig:
    enabled: bool = True
    # exponential: a constant decay; power: EDM2's power-function EMAs of the widths std_rel (the
    # first is the checkpoint's EMA), with snapshots for `lscore posthoc-ema`
    kind: str = "exponential"
    decay: float = 0.999
    std_rel: list[float] = field(default_factory=lambda: [0.05, 0.10])
    snapshot_every_n_steps: int = 0  # power: 0 = at every checkpoint.every_n_steps


@dataclass
class DataConfig:
    name: str = "digits"  # a key of lightning_score.data.DATASETS
    root: str = "data"
    image_size: int = 16
    batch_size: int = 128
    num_workers: int = 0
    random_flip: bool = False
    download: bool = False
    categories: list[str] = field(default_factory=lambda: ["bedroom"])  # LSUN
    val_fraction: float = 0.1  # for sets without an official validation split
    num_points: int = 20000  # toy 2-D sets
    toy: str = "gaussian_mixture"  # gaussian_mixture | checkerboard | swiss_roll
    # image files that cannot be read (folder, CelebA as a folder): stop (one line naming the
    # file) | skip (left out with a warning that counts them)
    bad_images: str = "stop"
    # data.name=streaming: LitData chunks written by `lscore prepare` (a folder or s3:// gs://
    # URI holding train/ and val/), a local cache for remote chunks and its size limit, and the
    # number of image channels (networks are built before the data loads)
    input_dir: str = ""
    cache_dir: str = ""
    cache_limit: str = "50GB"
    channels: int = 3


@dataclass
class SamplingConfig:
    sampler: str = "pc"  # a key of lightning_score.sampling.SAMPLERS
    predictor: str = "euler_maruyama"
    corrector: str = "none"
    snr: float = 0.16
    corrector_steps: int = 1
    steps: int = 1000
    eps: float | None = None  # None: the SDE's default end time
    denoise: bool = True
    # fixed-step time grid: uniform | log_sigma | edm | auto (the SDE's default, see sampling)
    schedule: str = "auto"
    rho: float = 7.0
    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "dopri5"
    # EDM's stochastic sampler (sampler=edm, Karras et al. 2022 Alg. 2): churn and its noise range
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    # RePaint's resampling (pc only): walk each segment of resample_jump steps resample_repeats
    # times, diffusing back up between walks; harmonizes conditioned samples (0 / 1: off)
    resample_jump: int = 0
    resample_repeats: int = 1
    # grid solvers (sampling/ancestral.py, multistep.py): the noise of ddim, euler_ancestral and
    # the dpmpp_*_sde solvers (None: 0 for ddim, 1 for the others); the order of unipc and deis
    # (2 or 3); UniPC's B(h): bh1 | bh2
    eta: float | None = None
    order: int = 3
    variant: str = "bh2"
    # restart (Xu et al. 2023): at the first grid sigma <= restart_sigma_min, go back up to
    # restart_sigma_max and down again in restart_steps Heun steps, restart_repeats times
    restart_sigma_min: float = 0.3
    restart_sigma_max: float = 1.0
    restart_steps: int = 4
    restart_repeats: int = 1


@dataclass
class EvaluationConfig:
    """FID / KID during training (EvaluationCallback); every_n_steps = 0 turns it off."""

    every_n_steps: int = 0
    num_samples: int = 1000  # the metric names carry it: fid_1k
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid"])  # fid | kid | is
    batch_size: int = 250
    stats: str | None = None  # an `lscore stats` file; None: computed from the training set, cached
    reference_num: int = 0  # images of the training set in the computed statistics; 0: all


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip_val: float = 1.0
    val_check_interval: int = 500
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 50
    deterministic: bool = False
    nonfinite: str = "stop"  # non-finite loss or gradient: stop | skip (drop that update)
    # torch.compile of the score network: none | default | reduce-overhead (CUDA graphs) |
    # max-autotune; compiles once at the first step (reported), saved weights keep their names
    compile: str = "none"
    channels_last: bool = False  # NHWC weights for the convolutions (measure before using)


@dataclass
class CheckpointConfig:
    every_n_steps: int = 500
    keep_periodic: bool = True  # keep step-numbered snapshots beside `last`


@dataclass
class SampleGridConfig:
    every_n_steps: int = 500
    num: int = 64
    # The grids' sampler: a cheap few-step solver by default (dpmpp_2m, 20 steps on the SDE's
    # default grid: within ~1% of the data std on Gaussian data, tests/test_samplers_gaussian.py),
    # so a grid costs 20 NFE even where the config samples with 2000; "config": the sampling
    # section's own sampler.
    sampler: str = "dpmpp_2m"
    steps: int = 20


@dataclass
class LoggerConfig:
    name: str = "csv"  # csv | tensorboard | wandb
    project: str = "lightning-score"
    entity: str | None = None
    log_model: bool = False
    tags: list[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    name: str = "quickstart"
    seed: int = 0
    out_dir: str = "runs"
    # auto: continue from the run directory's newest valid checkpoint (start fresh when it has
    # none), so rerunning a preempted command continues it; none: start fresh (refused when the
    # run directory already holds checkpoints); or the path of a checkpoint to continue from.
    resume: str = "auto"
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sample_grid: SampleGridConfig = field(default_factory=SampleGridConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class ClassifierNetConfig:
    """The noise-conditional classifier's network (``lightning_score.conditioning.classifier``)."""

    channels: list[int] = field(default_factory=lambda: [32, 64])  # one level per entry
    blocks_per_level: int = 2
    dropout: float = 0.1
    sigma_data: float = 0.5  # input scaling 1 / sqrt(alpha^2 sigma_data^2 + std^2)


@dataclass
class ClassifierNoiseConfig:
    """How training draws the noise level of x_t (the keys of ``loss`` that mean the same)."""

    time_sampler: str = "uniform"  # uniform | lognormal
    eps: float = 1e-5
    p_mean: float = -1.2
    p_std: float = 1.2


@dataclass
class ClassifierConfig:
    """A noise-conditional classifier p_t(y | x_t) for classifier guidance
    (``lscore train-classifier``); ``sde`` and ``data`` must match the score model it guides."""

    name: str = "classifier"
    seed: int = 0
    out_dir: str = "runs"
    num_classes: int = 10
    sde: SDEConfig = field(default_factory=SDEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    net: ClassifierNetConfig = field(default_factory=ClassifierNetConfig)
    noise: ClassifierNoiseConfig = field(default_factory=ClassifierNoiseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig) and k != "kwargs":
            keys.extend(_valid_keys(v, full + "."))
    return keys


def _friendly(err: Exception, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or ("Key '" in str(err) and "not in" in str(err)):
        close = difflib.get_close_matches(key, _valid_keys(schema), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return ConfigError(f"{source}: unknown config key '{key}'{hint}")
    if isinstance(err, ValidationError):
        value = getattr(err, "msg", str(err)).splitlines()[0]
        return ConfigError(f"{source}: wrong type for '{key}': {value}")
    return ConfigError(f"{source}: {str(err).splitlines()[0]}")


def _load_yaml(path: Path, under: DictConfig, seen: tuple[Path, ...] = ()) -> Any:
    """The YAML at ``path`` merged over ``under`` and the files its ``base:`` entry names
    (relative to it, in order)."""
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found: pass an existing YAML, e.g. configs/quickstart.yaml"
        )
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"config files name each other as base: {chain}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # OmegaConf raises several unrelated types
        raise _friendly(err, under, str(path)) from None
    bases = node.pop("base", None) if isinstance(node, DictConfig) else None
    merged: Any = under
    for base in [bases] if isinstance(bases, str) else list(bases or []):
        merged = _load_yaml(path.parent / str(base), merged, (*seen, path.resolve()))
    try:
        return OmegaConf.merge(merged, node)
    except Exception as err:
        raise _friendly(err, under, str(path)) from None


PRESET_DIR = Path("configs") / "presets"


def preset_path(name: str) -> Path:
    """A preset's YAML: a file path, or a name of ``configs/presets/`` (in the working directory,
    else beside this source tree): ``gpu`` is ``configs/presets/gpu.yaml``."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path  # _load_yaml reports a missing file
    roots = (Path.cwd(), Path(__file__).resolve().parents[1])
    for root in roots:
        if (root / PRESET_DIR / f"{name}.yaml").is_file():
            return root / PRESET_DIR / f"{name}.yaml"
    known = sorted({p.stem for root in roots for p in (root / PRESET_DIR).glob("*.yaml")})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"unknown preset '{name}'{hint}: choose one of {', '.join(known) or '(none found)'} "
        f"from {PRESET_DIR}/, or give the path of a YAML file"
    )


def read_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    schema_cls: type | None = None,
    presets: list[str] | None = None,
) -> Any:
    """Schema defaults <- YAML at ``path`` (and its bases) <- each preset (a partial config,
    see :func:`preset_path`) <- ``key=value`` overrides.

    Types and key names are checked here; value checks are ``lightning_score.experiment``'s.
    ``schema_cls`` is the config dataclass (default :class:`ExperimentConfig`).
    """
    schema = OmegaConf.structured(schema_cls or ExperimentConfig)
    merged = schema if path is None else _load_yaml(Path(path), schema)
    for preset in presets or []:
        merged = _load_yaml(preset_path(preset), merged)
    return _to_config(_merge_overrides(merged, overrides, schema))


def overlay(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """``cfg`` (e.g. a checkpoint's) with ``key=value`` overrides applied."""
    schema = OmegaConf.structured(ExperimentConfig)
    return _to_config(_merge_overrides(OmegaConf.structured(cfg), overrides, schema))


def _merge_overrides(merged: Any, overrides: list[str] | None, schema: DictConfig) -> Any:
    if not overrides:
        return merged
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    try:
        return OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:  # OmegaConf raises several unrelated types
        raise _friendly(err, schema, "command line") from None


def _to_config(merged: Any) -> ExperimentConfig:
    """The dataclass config, with an interpolation (``${...}``) that does not resolve reported
    in one line that names its key."""
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except InterpolationResolutionError as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(
            f"config entry '{key}' holds an interpolation that does not resolve ({reason}): "
            "give it a value, or a ${other.key} that exists"
        ) from None


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dict (for checkpoints, loggers and run directories)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": leaf}``; lists stay values (they are values in our schema)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_from_dict(data: dict[str, Any], schema_cls: type | None = None) -> Any:
    """Rebuild a config from :func:`to_dict` output (e.g. from a checkpoint); types checked.
    ``schema_cls`` is the config dataclass (default :class:`ExperimentConfig`)."""
    schema = OmegaConf.structured(schema_cls or ExperimentConfig)
    try:
        return _to_config(OmegaConf.merge(schema, data))
    except Exception as err:  # OmegaConf raises several unrelated types
        raise _friendly(err, schema, "saved config") from None


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), path)


def require(ok: bool, message: str) -> None:
    """Raise a ConfigError with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def require_choice(value: str, choices: set[str] | dict, key: str) -> None:
    """Raise a ConfigError listing ``choices`` (and a close match) unless ``value`` is one."""
    if value not in choices:
        close = difflib.get_close_matches(value, sorted(choices), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{key}='{value}' is not valid{hint}; choose one of: {', '.join(sorted(choices))}"
        )


#: Lightning's accelerator names (``gpu``: CUDA or MPS, whichever the machine has); TPUs (XLA)
#: are not supported by this project and are refused at load
ACCELERATORS = {"auto", "cpu", "gpu", "cuda", "mps"}


def _devices_valid(devices: Any) -> bool:
    """What Lightning accepts as ``devices``: a count >= 1, -1 (all), "auto", or device ids."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 0 and all(isinstance(d, int) and d >= 0 for d in devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return True
        if "," in text:  # device ids, "0," for device 0 alone
            ids = [p.strip() for p in text.split(",") if p.strip()]
            return bool(ids) and all(p.isdigit() for p in ids)
        return text.isdigit() and int(text) > 0
    return isinstance(devices, int) and (devices > 0 or devices == -1)


def hardware_problem(cfg: ExperimentConfig) -> str | None:
    """Why ``cfg.trainer`` cannot run on this machine (an accelerator it lacks), else None.

    Not part of :func:`validate`: a config for a GPU cluster is valid on a laptop, where
    ``--dry-run`` reports this as a note and training refuses to start.
    """
    from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator

    name = cfg.trainer.accelerator
    if name in ("auto", "cpu"):
        return None
    if name == "gpu":
        available = CUDAAccelerator.is_available() or MPSAccelerator.is_available()
    else:
        available = AcceleratorRegistry[name]["accelerator"].is_available()
    if available:
        return None
    return (
        f"trainer.accelerator={name} is not available on this machine: use "
        "trainer.accelerator=cpu (or auto) here, or run on a machine that has it"
    )


def _device_count(devices: Any) -> int | None:
    """Devices per node as Lightning reads ``trainer.devices`` (None: decided at run time)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return None


#: Lightning's short precision names, and the full ones we ask for instead.
PRECISION_ALIASES = {"bf16": "bf16-mixed", "16": "16-mixed", "64": "64-true"}
BF16_HINT = (
    " (bfloat16 compute with float32 weights and optimizer state, the usual choice for training on "
    "GPUs that have bfloat16; bf16-true would keep the weights themselves in bfloat16)"
)


#: keys where an infinite value is meaningful (EDM's churn range has no upper end by default)
INFINITE_ALLOWED = {"sampling.s_tmax"}


def check_finite(cfg: Any) -> None:
    """Refuse NaN anywhere in a config and infinity outside :data:`INFINITE_ALLOWED` (YAML reads
    ``1e400`` as infinity, which passes every ``> 0`` check and fails at the first step)."""
    for key, value in flatten(to_dict(cfg)).items():
        if isinstance(value, float) and not math.isfinite(value):
            require(
                value == math.inf and key in INFINITE_ALLOWED,
                f"{key}={value} is not a finite number: give a finite value",
            )


def check_name_and_seed(name: str, seed: int) -> None:
    """``name`` must name a folder inside ``out_dir``; ``seed`` must be one numpy and Lightning
    accept (0 to 2^32 - 1)."""
    require(name.strip() != "", "name must not be empty: it names the run directory")
    path = Path(name)
    require(
        not path.is_absolute() and ".." not in path.parts,
        f"name='{name}' must stay inside out_dir: a relative path without '..'",
    )
    require(0 <= seed < 2**32, f"seed must lie in [0, 2^32 - 1], got {seed}")


def check_run_sections(cfg: ExperimentConfig) -> None:
    """Checks of the sections that belong to the run as a whole (not to one part of it)."""
    require(cfg.resume.strip() != "", "resume must be none, auto or the path of a checkpoint")
    check_name_and_seed(cfg.name, cfg.seed)
    o = cfg.optim
    require(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    require(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must lie in [0, 1)")
    require(0 < cfg.ema.decay < 1, f"ema.decay must lie in (0, 1), got {cfg.ema.decay}")
    require(
        cfg.ema.kind in ("exponential", "power"),
        f"ema.kind must be exponential or power, got '{cfg.ema.kind}'",
    )
    require(
        len(cfg.ema.std_rel) > 0 and all(0 < s < 12**-0.5 for s in cfg.ema.std_rel),
        f"ema.std_rel must be widths in (0, 0.2887), e.g. [0.05, 0.10], got {list(cfg.ema.std_rel)}",
    )
    require(
        cfg.ema.snapshot_every_n_steps >= 0,
        "ema.snapshot_every_n_steps must be >= 0 (0: at every checkpoint.every_n_steps)",
    )

    ev = cfg.evaluation
    require(ev.every_n_steps >= 0, "evaluation.every_n_steps must be >= 0 (0 turns evaluation off)")
    require(ev.num_samples >= 2, f"evaluation.num_samples must be >= 2, got {ev.num_samples}")
    require(ev.batch_size > 0, f"evaluation.batch_size must be positive, got {ev.batch_size}")
    require(
        ev.reference_num >= 0, "evaluation.reference_num must be >= 0 (0: the whole training set)"
    )
    for metric in ev.metrics:
        require_choice(metric, {"fid", "kid", "is"}, "evaluation.metrics entry")

    t = cfg.trainer
    require(t.max_steps > 0, f"trainer.max_steps must be positive, got {t.max_steps}")
    require(
        t.gradient_clip_val >= 0, "trainer.gradient_clip_val must be >= 0 (0 disables clipping)"
    )
    alias = PRECISION_ALIASES.get(t.precision)
    require(
        alias is None,
        f"trainer.precision='{t.precision}' is ambiguous: use trainer.precision={alias}"
        + (BF16_HINT if alias == "bf16-mixed" else ""),
    )
    require_choice(
        t.precision,
        {"32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"},
        "trainer.precision",
    )
    require(
        cfg.sample_grid.steps > 0,
        f"sample_grid.steps must be positive, got {cfg.sample_grid.steps}",
    )
    require_choice(t.nonfinite, {"stop", "skip"}, "trainer.nonfinite")
    require_choice(t.compile, set(COMPILE_MODES), "trainer.compile")
    require(
        t.accelerator != "tpu",
        "trainer.accelerator=tpu is not supported by lightning-score (no XLA support): use "
        "trainer.accelerator=gpu, cpu or auto",
    )
    require_choice(t.accelerator, ACCELERATORS, "trainer.accelerator")
    require(
        _devices_valid(t.devices),
        f"trainer.devices must be a positive count, -1, 'auto' or a list of device ids, "
        f"got {t.devices!r}",
    )
    require(t.num_nodes > 0, f"trainer.num_nodes must be positive, got {t.num_nodes}")
    require(
        t.val_check_interval > 0,
        f"trainer.val_check_interval must be a positive number of steps, got {t.val_check_interval}",
    )
    require(
        t.log_every_n_steps > 0,
        f"trainer.log_every_n_steps must be positive, got {t.log_every_n_steps}",
    )
    devices = _device_count(t.devices)
    if devices is not None and devices * t.num_nodes > 1:
        world = devices * t.num_nodes
        require(
            cfg.data.batch_size % world == 0,
            f"data.batch_size ({cfg.data.batch_size}) is the global batch: it must be divisible "
            f"by trainer.devices x trainer.num_nodes ({world})",
        )
    require(cfg.checkpoint.every_n_steps > 0, "checkpoint.every_n_steps must be positive")
    g = cfg.sample_grid
    require(g.num > 0, f"sample_grid.num must be positive, got {g.num}")
    require(
        g.every_n_steps > 0, f"sample_grid.every_n_steps must be positive, got {g.every_n_steps}"
    )
    require_choice(cfg.logger.name, {"csv", "tensorboard", "wandb"}, "logger.name")


def launcher_int(name: str, default: int) -> int:
    """The whole number a launcher put in the environment variable ``name`` (``default`` when
    unset), refused in one line when it is not one."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < (1 if name == "WORLD_SIZE" else 0):
        raise ValueError(
            f"{name}={value!r} in the environment is not a valid {name}: unset it, or start the "
            "processes with a launcher that sets it (torchrun)"
        )
    return number


#: rank variables of launchers (torchrun, SLURM), which Lightning and torchmetrics parse as they
#: are imported: one that is not a number would surface as a traceback from inside that import
LAUNCHER_VARIABLES = {
    "WORLD_SIZE": 1,
    "RANK": 0,
    "LOCAL_RANK": 0,
    "NODE_RANK": 0,
    "SLURM_PROCID": 0,
}


def check_launcher_environment() -> None:
    """Refuse, in one line, a launcher variable that is set but not a valid number."""
    for name, default in LAUNCHER_VARIABLES.items():
        launcher_int(name, default)
