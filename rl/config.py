"""The run configuration: small nested pydantic models, loaded from YAML with dotted overrides.

A YAML file may name another with `base: other.yaml` (relative to itself); the file's keys are
merged over the base's, recursively for mappings, replacing lists and scalars. Overrides
(`train.lr=2e-6`, `env.sources.0.few_shot=2`) are parsed as YAML values and applied last. Every model forbids unknown keys;
`ConfigError` turns pydantic's errors into messages that name the path and suggest the fix.
This module imports nothing heavy: the CLI validates a config before any model is loaded.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rl.security import is_loopback


def non_finite_at(value: Any) -> tuple[list[str], float] | None:
    """(path of keys and list indices, the value) of the first nan or inf inside `value`; None if there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return [], value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        found = non_finite_at(inner)
        if found is not None:
            return [str(key), *found[0]], found[1]
    return None


# No setting means anything as nan or inf (a weight, a rate, a clip range): every float field of
# every model refuses them, so `rewards.0.weight=nan` fails at load time naming the key.
FINITE_ONLY = ConfigDict(allow_inf_nan=False)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, **FINITE_ONLY)


class RunConfig(Section):
    name: str = Field("run", description="Name of the run; the run folder is OUTPUT_DIR/NAME-TIMESTAMP.")
    output_dir: str = Field("runs", description="Folder that holds run folders.")
    seed: int = Field(0, description="Seed for task generation, sampling and initialisation.")


class RewardComponent(BaseModel):
    """A reward component; any other key is a parameter of its function (checked at start-up)."""

    model_config = ConfigDict(extra="allow", **FINITE_ONLY)
    name: str = Field(description="Built-in name, module:function, or path/to/file.py:function.")
    weight: float = Field(1.0, description="Weight of this component in the total reward.")
    on_error: float = Field(0.0, description="Score when the function raises or exceeds the timeout.")
    alias: str | None = Field(None, description="Metric name (reward/<alias>) when the same function is listed twice.")
    correctness: bool | None = Field(
        None, description="This component says whether an answer is right (positive = correct) and defines accuracy; "
        "default: the first of boxed_answer, math_answer, knights_knaves, countdown."
    )

    @model_validator(mode="after")
    def _check_parameters_finite(self) -> RewardComponent:
        """The extra keys (the function's parameters) have no declared type, so allow_inf_nan cannot see them."""
        for key, value in (self.model_extra or {}).items():
            found = non_finite_at(value)
            if found is not None:
                path = ".".join([key, *found[0]])
                raise PydanticCustomError("finite_number", "parameter {key} must be a finite number, got {got}",
                                          {"key": path, "got": found[1]})
        return self


class SourceBase(Section):
    """What every source of tasks shares; unset values fall back to `env.*`, then to the source's defaults."""

    system_prompt: str | None = Field(None, description="System message; default env.system_prompt, then the source's own.")
    instruction: str | None = Field(None, description="Appended to every question; default env.instruction, then the source's own.")
    rewards: list[RewardComponent] | None = Field(
        None, description="Reward components for this source's tasks; default the top-level `rewards`, then the source's own."
    )
    train_size: int | None = Field(None, ge=1, description="Training tasks per distribution; default env.train_size.")
    test_size: int | None = Field(None, ge=1, description="Held-out tasks per distribution; default env.test_size.")


class ArithmeticSource(SourceBase):
    type: Literal["arithmetic"] = "arithmetic"
    distributions: list[str] = Field(
        default_factory=lambda: ["add_1d", "add_2d"], min_length=1,
        description="<op>_<digits>d with op add/sub/mul, e.g. add_1d, add_2d, sub_2d, mul_1d.",
    )
    few_shot: int = Field(0, ge=0, le=8, description="Solved training problems shown as chat turns before each question.")
    few_shot_think: bool = Field(
        False, description="The solved examples reason in <think>...</think> before the boxed answer (the format a "
        "label-free run's format rewards ask for)."
    )


class KnightsKnavesSource(SourceBase):
    type: Literal["knights_knaves"] = "knights_knaves"
    distributions: list[str] = Field(
        default_factory=lambda: [f"kk_{n}p" for n in range(3, 15)], min_length=1,
        description="kk_<n>p: puzzles with n people, 3 <= n <= 14 (default all 12).",
    )


class CountdownSource(SourceBase):
    type: Literal["countdown"] = "countdown"
    distributions: list[str] = Field(
        default_factory=lambda: ["cd_3n", "cd_4n"], min_length=1,
        description="cd_<k>n: reach a target from k numbers with + - * /.",
    )


class FileSource(SourceBase):
    type: Literal["file"] = "file"
    path: str = Field(description="A .jsonl or .parquet file of questions and answers (relative to the working folder).")
    test_path: str | None = Field(None, description="A separate held-out file; default: hold out test_size rows of `path`.")
    format: Literal["auto", "plain", "gsm8k", "math"] = Field(
        "auto", description="gsm8k: answers end in '#### 42'; math: the answer is the last \\boxed{} of a solution; auto: detect."
    )
    question: str | None = Field(None, description="Question column; default question, or problem for MATH-style files.")
    answer: str | None = Field(None, description="Answer column; default answer, or solution for MATH-style files.")
    distribution: str | None = Field(None, description="Column naming each row's distribution; without it the file is one distribution.")
    name: str | None = Field(None, description="Distribution name when there is no distribution column; default the file's stem.")
    strict: bool = Field(False, description="A malformed row is an error instead of being skipped with a warning.")


TaskSourceConfig = Annotated[
    ArithmeticSource | KnightsKnavesSource | CountdownSource | FileSource, Field(discriminator="type")
]
SOURCE_TYPES = ("arithmetic", "knights_knaves", "countdown", "file")


class EnvConfig(Section):
    sources: list[TaskSourceConfig] = Field(
        default_factory=lambda: [ArithmeticSource()], min_length=1,
        description="Where tasks come from: generators (arithmetic, knights_knaves, countdown) and files; each distribution of each source is one arm of the curriculum.",
    )
    train_size: int = Field(2000, ge=1, description="Training tasks per distribution (generators; files use all their rows).")
    test_size: int = Field(32, ge=1, description="Held-out tasks per distribution (disjoint from training).")
    system_prompt: str | None = Field(None, description="System message for every source that sets none; null: the source's default.")
    instruction: str | None = Field(None, description="Instruction for every source that sets none; null: the source's default.")
    label_free: bool = Field(
        False, description="Training tasks reach the workers without their answer (answer '', no metadata): training "
        "rewards must not read it (e.g. format_length); evaluation keeps the answers and scores with eval.rewards."
    )


class RolloutConfig(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    num_workers: int = Field(1, ge=0, description="Rollout worker processes `rl train` starts (more can join with `rl rollout`).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts (groups) per training step.")
    samples_per_prompt: int = Field(4, ge=2, description="Samples per prompt (GRPO group size n).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(96, ge=1, description="Maximum completion length in tokens.")
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + completion the engine accepts.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Engine and weight-sync dtype; auto: float32 on CPU, bfloat16 on GPUs from Ampere on, float16 before."
    )
    kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU (GiB).")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of its GPU's memory each engine may use (vLLM's gpu_memory_utilization); "
        "default: 0.9 split among the engines of a GPU, 0.4 split on a GPU shared with the learner."
    )
    gpu_memory_gib: float | None = Field(None, gt=0, description="Instead: GiB of GPU memory each engine may use.")
    share_gpu_with_learner: bool | None = Field(
        None, description="Local workers may run on the learner's GPUs when no GPU is left for them; default: only on a "
        "single-GPU machine (the workers there share GPU 0 with the learner)."
    )
    enforce_eager: bool | None = Field(
        None, description="Skip compilation and CUDA graphs (faster start, slower decode); default false (on CPU: true when "
        "no C++ compiler is found)."
    )
    cpu_threads: str | None = Field(None, description="Cores vLLM binds to on CPU, e.g. '0-1'; default all.")
    max_staleness: int = Field(1, ge=0, description="Drop trajectories more than this many policy versions old.")
    async_: bool = Field(
        False, alias="async",
        description="Generate step t+1's samples while step t trains (needs max_staleness >= 1); the lag is corrected "
        "with truncated importance sampling (train.tis_cap). false: strictly on-policy.",
    )
    backup_after: float | None = Field(
        1.5, gt=1.0, description="Copy a straggler's chunk to an idle worker once it has run this many times the median "
        "chunk time of the step (first answer wins; null: never)."
    )
    bucket_mb: int = Field(64, ge=1, description="Weight-sync bucket size in MiB.")
    reward_processes: int = Field(2, ge=1, description="Processes each worker scores rewards in.")
    reward_timeout_s: float = Field(5.0, gt=0, description="Per-call reward timeout; past it the call scores on_error.")
    debug_dump_weights: bool = Field(
        False, description="After each sync, workers save their live weights to RUN/worker-K-weights.safetensors (tests)."
    )

    @model_validator(mode="after")
    def _check_gpu_memory(self) -> RolloutConfig:
        if self.gpu_memory_utilization is not None and self.gpu_memory_gib is not None:
            raise ValueError("set rollout.gpu_memory_utilization or rollout.gpu_memory_gib, not both")
        return self


class TrainConfig(Section):
    steps: int = Field(20, ge=0, description="Optimizer steps (one per batch of prompts_per_step x samples_per_prompt).")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999))
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then constant.")
    packing: bool = Field(
        True, description="Shared-prompt packed micro-batches: each group's prompt once, several groups per row up to "
        "max_tokens_per_micro_batch; false: one right-padded row per sample, micro_batch_size rows per pass."
    )
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=16, description="Tokens per forward/backward pass of the packed layout; peak activation memory grows "
        "with it. Default: 512 on CPU (as fast as 1024 there, with less memory), 8192 on a GPU."
    )
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass of the padded layout (packing: false).")
    skip_zero_advantage: bool = Field(
        True, description="Leave out of the learner's passes the samples that cannot change the update: those masked "
        "out of the loss, and, with no KL or entropy term and no critic, those whose advantage is exactly 0 (a group "
        "whose rewards are all equal). The update is the same; train/entropy and the other diagnostics then cover the "
        "computed tokens. false: every sample is computed."
    )
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient norm to this.")
    algorithm: Literal["grpo", "dr_grpo", "dapo", "rloo", "ppo"] = Field(
        "grpo", description="A preset for the settings below that are not given: grpo, dr_grpo (Dr. GRPO), dapo (DAPO), "
        "rloo (REINFORCE leave-one-out), ppo (critic + GAE)."
    )
    advantage: Literal["grpo", "dr_grpo", "rloo", "gae"] | None = Field(
        None, description="Advantage estimator: grpo (r - mean) / std per group, dr_grpo r - mean, rloo r - mean of the "
        "others, gae (a critic, see `critic`); default from algorithm."
    )
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] | None = Field(
        None, description="How per-token losses become the batch loss: token_mean (DAPO), seq_mean_token_mean (GRPO paper), "
        "seq_mean_token_sum_norm (Dr. GRPO: token sums / length_norm); default from algorithm (grpo: token_mean)."
    )
    length_norm: int | None = Field(None, ge=1, description="seq_mean_token_sum_norm's constant; default rollout.max_new_tokens.")
    clip_eps: float = Field(0.2, gt=0, description="PPO/GRPO ratio clip range (both sides unless clip_eps_low/high are set).")
    clip_eps_low: float | None = Field(None, gt=0, lt=1, description="Lower clip range: ratio >= 1 - clip_eps_low; default clip_eps.")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO's clip-higher: 0.28); default clip_eps.")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the reference model; 0 loads no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="KL estimator (Schulman 2020): k1 log-ratio, k2 squared, k3 unbiased and >= 0; in the loss, k2's "
        "gradient is reverse KL's, k3's forward KL's, k1's zero (refused with kl_in: loss)."
    )
    kl_in: Literal["loss", "reward"] = Field(
        "loss", description="loss: a KL term in the loss; reward: a per-token reward penalty (PPO-RLHF, advantage: gae only)."
    )
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus: the loss subtracts entropy_coef x the mean token entropy.")
    dynamic_sampling: bool | None = Field(
        None, description="DAPO: drop groups whose rewards are all equal and sample more prompts until the batch is full."
    )
    dynamic_sampling_rounds: int = Field(4, ge=1, description="Most rounds of generation per step with dynamic_sampling; then train on what there is.")
    overlong_filter: bool | None = Field(None, description="DAPO: truncated samples (no end of answer) take no part in the loss.")
    tis_cap: float = Field(2.0, ge=1.0, description="rollout.async: cap of the truncated importance weight pi_learner / pi_sampler.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per batch (PPO mini-batches); >1 makes the clipping bite.")
    epochs: int = Field(1, ge=1, description="Passes over each batch (PPO epochs).")
    adv_eps: float = Field(1e-6, gt=0, description="Added to the group std in the advantage denominator.")
    zero_stage: int = Field(1, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Training dtype; auto: bfloat16 on GPUs that support it (Ampere on), else float32 (always on CPU)."
    )
    gradient_checkpointing: bool = Field(False)
    threads: int | None = Field(None, ge=1, description="torch threads of the learner; default all cores.")


ALGORITHM_PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"advantage": "grpo", "loss_agg": "token_mean", "dynamic_sampling": False, "overlong_filter": False},
    # Liu et al. 2025: no std normalisation, sums over tokens divided by a constant (no length bias)
    "dr_grpo": {"advantage": "dr_grpo", "loss_agg": "seq_mean_token_sum_norm", "dynamic_sampling": False, "overlong_filter": False},
    # Yu et al. 2025: clip-higher, token-level loss, dynamic sampling, overlong filtering, no KL
    "dapo": {"advantage": "grpo", "loss_agg": "token_mean", "clip_eps_low": 0.2, "clip_eps_high": 0.28,
             "dynamic_sampling": True, "overlong_filter": True},
    "rloo": {"advantage": "rloo", "loss_agg": "token_mean", "dynamic_sampling": False, "overlong_filter": False},
    "ppo": {"advantage": "gae", "loss_agg": "token_mean", "dynamic_sampling": False, "overlong_filter": False},
}


class CriticConfig(Section):
    """The value model of PPO (train.advantage: gae), trained by its own DeepSpeed engine."""

    model: str | None = Field(None, description="Model the critic starts from (a value head is added); default: the policy's model.")
    lr: float = Field(1e-5, gt=0, description="Critic learning rate.")
    warmup_steps: int = Field(0, ge=0)
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    value_clip: float | None = Field(0.2, gt=0, description="Clip range of the value update around the old value (null: none).")
    whiten_advantages: bool = Field(True, description="Normalise GAE advantages over the batch's tokens.")


class LearnerConfig(Section):
    """How many DeepSpeed ranks train; rank 0 alone talks to the rollout workers."""

    world_size: int = Field(1, ge=1, description="Learner ranks (GPUs, or processes on CPU); >1 starts them with DeepSpeed's launcher.")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile ('host slots=N' lines) for a learner over several nodes.")
    master_port: int = Field(29500, ge=1, le=65535, description="Port of the learner ranks' process group.")
    master_addr: str | None = Field(None, description="Rank 0's address as the other learner nodes reach it (hostfile runs).")


class EvalConfig(Section):
    before: bool = Field(True, description="Evaluate the held-out split before training.")
    after: bool = Field(True, description="Evaluate the held-out split after training.")
    every: int = Field(0, ge=0, description="Also evaluate every this many steps during training (0: only before/after).")
    samples: int = Field(1, ge=1, description="Samples per held-out task (k of mean@k and pass@k).")
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy; samples > 1 needs a temperature > 0.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1, description="Default: rollout.max_new_tokens.")
    rewards: list[RewardComponent] | None = Field(
        None, min_length=1, description="Reward components that score held-out tasks; default: each source's training "
        "rewards, or under env.label_free each source's default rewards (they judge correctness)."
    )

    @model_validator(mode="after")
    def _check_sampling(self) -> EvalConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"eval.samples={self.samples} with eval.temperature=0 would draw {self.samples} identical greedy answers; "
                "set eval.temperature (e.g. 0.6) or eval.samples=1"
            )
        return self


class TransportConfig(Section):
    host: str = Field("127.0.0.1", description="Address the learner binds; loopback unless set.")
    port: int = Field(0, ge=0, le=65535, description="Port the learner binds; 0 picks a free one.")
    worker_wait_s: float = Field(600.0, gt=0, description="How long the learner waits for its first workers.")
    wait_for_workers: int | None = Field(
        None, ge=1, description="Workers to wait for before the first step; default rollout.num_workers (at least 1)."
    )
    heartbeat_interval_s: float = Field(1.0, gt=0, le=60, description="How often a worker tells the learner it is alive.")
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="A worker silent this long is dropped; its prompts go to the other workers."
    )
    learner_timeout_s: float = Field(60.0, gt=0, description="A worker whose learner has been gone this long exits.")
    no_workers_wait_s: float = Field(
        300.0, gt=0, description="With every worker gone, how long the learner waits for one to join before it checkpoints and stops."
    )
    curve_keys: str | None = Field(
        None, description="Folder made by `rl keys`; encrypts and authenticates every connection (ZeroMQ CURVE)."
    )
    allow_insecure_network: bool = Field(
        False, description="Allow a non-loopback `host` without curve_keys: no encryption, anyone who reaches the port can join."
    )

    @model_validator(mode="after")
    def _check_network(self) -> TransportConfig:
        if not is_loopback(self.host) and not self.curve_keys and not self.allow_insecure_network:
            raise ValueError(
                f"transport.host={self.host!r} is not a loopback address, so anyone who can reach the port could join "
                "the run, read the weights and send samples; either make keys with `rl keys DIR` and set "
                "transport.curve_keys=DIR (encrypts and authenticates every connection), or set "
                "transport.allow_insecure_network=true (a trusted network only: nothing is encrypted)"
            )
        return self


class UCBSettings(Section):
    window: int = Field(300, ge=1, description="Recent samples whose |advantage| each distribution's score averages.")
    c: float = Field(1.0, ge=0, description="Weight of the exploration bonus sqrt(2 ln(N+1) / (n_j+1)).")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature over the scores.")
    initial_weights: dict[str, float] | None = Field(None, description="Sampling weights until every distribution has been observed.")
    signal: Literal["reward", "correctness"] = Field(
        "reward", description="The |advantage| the score averages, computed for the curriculum from each group's samples "
        "whatever train.advantage is: reward, GRPO's (r - mean) / (std + eps) of the total reward (DUMP; equal to the "
        "training advantages under grpo); correctness, the same of the correctness verdict alone (1 right, 0 wrong), so a "
        "format reward that varies inside a group cannot make a distribution whose answers are all wrong look learnable."
    )


class UCBCurriculumConfig(Section):
    ucb: UCBSettings = Field(default_factory=UCBSettings)


class StaticSettings(Section):
    weights: dict[str, float] = Field(description="Fixed sampling weight per distribution (normalised).")


class StaticCurriculumConfig(Section):
    static: StaticSettings


CurriculumConfig = Literal["uniform"] | UCBCurriculumConfig | StaticCurriculumConfig
CURRICULUM_FORMS = "uniform, ucb, {ucb: {window, c, temperature, initial_weights, signal}} or {static: {weights: {dist: w}}}"


def parse_curriculum(value: Any) -> Any:
    """The config's curriculum setting as a typed model; one clear message for any other shape."""
    if value == "uniform" or isinstance(value, (UCBCurriculumConfig, StaticCurriculumConfig)):
        return value
    if value == "ucb":
        return UCBCurriculumConfig()
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("ucb", "static"):
        kind, settings = next(iter(value.items()))
        model = UCBCurriculumConfig if kind == "ucb" else StaticCurriculumConfig
        try:
            return model.model_validate({kind: settings or {}} if kind == "ucb" else {kind: settings})
        except ValidationError as err:
            raise ValueError("; ".join(describe_error({**e, "loc": ("curriculum", *e["loc"])}) for e in err.errors())) from None
    raise ValueError(f"curriculum must be {CURRICULUM_FORMS}; got {value!r}")


class CheckpointConfig(Section):
    every: int = Field(0, ge=0, description="Save a checkpoint every this many steps and at the last step (0: only on Ctrl-C or SIGTERM).")
    keep_last: int = Field(2, ge=1, description="How many checkpoints to keep; older ones are deleted.")


class LoggingConfig(Section):
    wandb: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when WANDB_API_KEY is set, offline otherwise."
    )
    project: str = Field("rl", description="W&B project.")
    progress: bool = Field(True, description="Show a progress bar.")
    completions_every: int = Field(
        1, ge=0, description="Every this many steps, write every sample of the step to RUN/completions.jsonl and log a "
        "W&B table of some of them (0: never)."
    )
    completions_per_step: int | None = Field(
        None, ge=0, description="Rows of the W&B completions table per logged step, whole groups only (0: no table; "
        "null: 16, or one group where rollout.samples_per_prompt is larger)."
    )


class Config(Section):
    model: str = Field("smollm2-135m-instruct", description="Built-in model name or a local Hugging Face folder.")
    run: RunConfig = Field(default_factory=RunConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rewards: list[RewardComponent] | None = Field(
        None,
        min_length=1,
        description="Reward components for every source that sets none; null: each source's default "
        "(arithmetic: boxed_answer + boxed_format, knights_knaves: knights_knaves + format, countdown: countdown + format, files: math_answer + boxed_format).",
    )
    reward_modules: list[str] = Field(
        default_factory=list, description="Modules or .py files to import first; their @reward functions become names."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    curriculum: CurriculumConfig = Field(
        "uniform",
        description="Which distribution each prompt comes from: uniform, ucb (DUMP: UCB over mean |advantage|, "
        "or {ucb: {window, c, temperature, initial_weights, signal: reward|correctness}}), or {static: {weights: {dist: w}}}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_algorithm_preset(cls, data: Any) -> Any:
        """Fill the train settings a user left unset from train.algorithm's preset."""
        if not isinstance(data, dict) or not isinstance(data.get("train", {}), dict):
            return data
        train = dict(data.get("train") or {})
        preset = ALGORITHM_PRESETS.get(train.get("algorithm", "grpo"))
        if preset is None:
            return data  # the field validator names the valid algorithms
        for key, value in preset.items():
            if train.get(key) is None:
                train[key] = value
        return {**data, "train": train}

    @field_validator("curriculum", mode="before")
    @classmethod
    def _parse_curriculum(cls, value: Any) -> Any:
        return parse_curriculum(value)

    def curriculum_spec(self) -> str | dict:
        """The curriculum setting as plain data for rl.curriculum.make_curriculum."""
        return self.curriculum if isinstance(self.curriculum, str) else self.curriculum.model_dump()

    def curriculum_signal(self) -> str:
        """What the curriculum's |advantage| is computed from: curriculum.ucb.signal; reward for the others (only counted)."""
        return self.curriculum.ucb.signal if isinstance(self.curriculum, UCBCurriculumConfig) else "reward"
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_distributions(self) -> Config:
        seen: dict[str, int] = {}
        for index, source in enumerate(self.env.sources):
            for name in getattr(source, "distributions", []):
                if name in seen:
                    raise ValueError(f"distribution {name!r} is listed twice (env.sources.{seen[name]} and env.sources.{index})")
                seen[name] = index
        return self

    def prompt_token_limit(self) -> int:
        """The longest prompt that leaves room for the longest answer (training or evaluation)."""
        return self.rollout.max_model_len - max(self.rollout.max_new_tokens, self.eval.max_new_tokens or 0)

    @model_validator(mode="after")
    def _check_label_free(self) -> Config:
        from rl.label_free import label_free_problem

        problem = label_free_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _check_lengths(self) -> Config:
        if self.prompt_token_limit() < 8:
            raise ValueError(
                f"rollout.max_model_len={self.rollout.max_model_len} leaves no room for prompts after "
                f"{max(self.rollout.max_new_tokens, self.eval.max_new_tokens or 0)} new tokens; raise rollout.max_model_len"
            )
        return self

    @model_validator(mode="after")
    def _check_algorithm(self) -> Config:
        t = self.train
        if t.kl_in == "reward" and t.advantage != "gae" and t.kl_coef > 0:
            raise ValueError("train.kl_in=reward shapes per-token rewards for GAE; use it with train.advantage=gae "
                             "(train.algorithm=ppo), or set train.kl_in=loss")
        if t.kl_in == "loss" and t.kl_estimator == "k1" and t.kl_coef > 0:
            # E_pi[grad log pi] = 0: as a loss k1's expected gradient is zero, the penalty would do nothing
            raise ValueError("train.kl_estimator=k1 inside the loss (train.kl_in=loss) has zero expected gradient, so the KL "
                             "penalty would do nothing; use train.kl_estimator=k2 (its gradient is the on-policy reverse-KL "
                             "gradient) or k3 (the default), or keep k1 as a reward penalty with train.kl_in=reward "
                             "(train.algorithm=ppo)")
        if self.rollout.async_ and self.rollout.max_staleness < 1:
            raise ValueError("rollout.async=true trains on samples one policy version old; set rollout.max_staleness >= 1")
        batch = self.rollout.prompts_per_step * self.rollout.samples_per_prompt
        if t.packing and batch % t.mini_batches:
            raise ValueError(f"train.mini_batches={t.mini_batches} must divide the batch rollout.prompts_per_step x "
                             f"rollout.samples_per_prompt = {batch}")
        if not t.packing and batch % (t.mini_batches * t.micro_batch_size):
            raise ValueError(f"train.mini_batches x train.micro_batch_size = {t.mini_batches * t.micro_batch_size} must divide "
                             f"the batch rollout.prompts_per_step x rollout.samples_per_prompt = {batch}")
        return self

    @model_validator(mode="after")
    def _check_completions_table(self) -> Config:
        rows, group = self.logging.completions_per_step, self.rollout.samples_per_prompt
        if rows is not None and 0 < rows < group:  # the table keeps whole groups: a smaller limit would leave it empty
            raise ValueError(f"logging.completions_per_step={rows} is below rollout.samples_per_prompt={group}; the table "
                             f"keeps whole groups, so set it to at least {group} (or 0 for no table)")
        return self

    @model_validator(mode="after")
    def _check_batch(self) -> Config:
        batch = self.rollout.prompts_per_step * self.rollout.samples_per_prompt
        if not self.train.packing and batch % self.train.micro_batch_size:
            raise ValueError(
                f"train.micro_batch_size={self.train.micro_batch_size} must divide the batch "
                f"rollout.prompts_per_step x rollout.samples_per_prompt = {batch}"
            )
        return self


def completions_table_rows(config: Config) -> int:
    """The W&B completions table's row limit per logged step (logging.completions_per_step, null: 16 or one group)."""
    rows = config.logging.completions_per_step
    return max(16, config.rollout.samples_per_prompt) if rows is None else rows


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file or key and says what to do."""


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = load_yaml_with_base(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source=str(path))


def load_yaml_with_base(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `base:` chain loops back to itself ({' -> '.join(map(str, _seen + (path,)))}).")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}.")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    return deep_merge(load_yaml_with_base(base_path, _seen + (path,)), data)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is read as a YAML scalar."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value (e.g. train.lr=2e-6).")
    dotted, _, text = item.partition("=")
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {item!r}: empty key in {dotted!r}.")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err}).") from err
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):  # env.sources.0.few_shot=2 indexes into a list
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {item!r}: `{'.'.join(keys[:depth])}` is a list of {len(node)}; use an index below {len(node)}.")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if last:
            node[key] = value
        else:
            if not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: " + "\n  ".join(describe_error(e) for e in err.errors())) from None


def describe_error(error: dict[str, Any]) -> str:
    # A discriminated union puts the tag in the location (env.sources.0.file.path); users never write it.
    loc = [str(p) for i, p in enumerate(error["loc"]) if not (p in SOURCE_TYPES and i and isinstance(error["loc"][i - 1], int))]
    path = ".".join(loc) or "(top level)"
    raw_loc = [str(p) for p in error["loc"]]
    kind = error["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = ", ".join(SOURCE_TYPES)
        got = error["input"].get("type") if isinstance(error["input"], dict) else None
        if got is None:
            return f"`{path}` needs `type:`, one of {tags}."
        close = difflib.get_close_matches(str(got), SOURCE_TYPES, n=1)
        return f"`{path}.type` must be one of {tags}, got {got!r}" + (f": did you mean {close[0]!r}?" if close else ".")
    if kind == "extra_forbidden":
        valid = sorted(fields_at(raw_loc[:-1]))
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"did you mean `{'.'.join(loc[:-1] + close)}`?" if close else f"valid keys here: {', '.join(valid)}"
        return f"unknown key `{path}`: {hint}"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return f"`{path}` is required."
    if kind == "finite_number":  # nan or inf, in a float field or (key in ctx) a reward parameter
        ctx = error.get("ctx") or {}
        where = f"{path}.{ctx['key']}" if "key" in ctx else path
        got = ctx.get("got", error.get("input"))
        return f"`{where}` must be a finite number, got {got!r}; nan and inf mean nothing as a setting."
    expected = EXPECTED.get(kind)
    got = error.get("input")
    if kind == "literal_error":
        expected = f"one of {error['ctx']['expected']}"
    if expected:
        return f"`{path}` must be {expected}, got {got!r}."
    return f"`{path}`: {error['msg']} (got {got!r})."


EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "tuple_type": "a list of two numbers",
}


def fields_at(loc: list[str]) -> set[str]:
    """Field names of the model found by walking `loc` from Config (list indices are skipped)."""
    model: type[BaseModel] = Config
    for index, part in enumerate(loc):
        if part.isdigit() or (part in SOURCE_TYPES and part not in model.model_fields):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return set()
        candidates = list(model_types(field.annotation))
        if len(candidates) > 1:  # a union of sources: the element's `type` picks one, taken from the error's input
            candidates = [c for c in candidates if c.model_fields.get("type") and c.model_fields["type"].default in loc[index + 1:]] or candidates
        model = candidates[0] if candidates else None
        if model is None:
            return set()
    return set(model.model_fields)


def model_types(annotation: Any):
    """The BaseModel classes inside an annotation (list[X], X | None, Annotated[Union[...]])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for inner in getattr(annotation, "__args__", ()) or ():  # Annotated[X, ...].__args__ is (X,)
        yield from model_types(inner)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True)
