"""The ledger's schema: every column of every table, defined once.

Each :class:`Column` has a name, a table, a pyarrow dtype, a unit and a definition (meaning and
formula). The writer refuses a table whose columns or dtypes differ from this module, and
``docs/ledger.md`` is generated from it (``python -m rledger.ledger.schema > docs/ledger.md``).

Notation used in the definitions, for one minibatch of ``B`` samples at Adam step ``k``:

- ``A_i``: the advantage used by the loss (``advantage_used``), ``r_i`` the probability ratio.
- ``s_i = grad_theta log pi(a_i|s_i)``, over every trainable parameter of the policy (parameters that
  ``log pi`` does not depend on contribute zeros).
- ``g_i``: sample ``i``'s term of the minibatch loss gradient, so that ``sum_i g_i`` is the gradient
  that ``loss.backward()`` produces. It splits into a policy-loss term ``g_i^pg``, an entropy term
  ``g_i^ent`` and a value-loss term ``g_i^vf``.
- ``c``: the global gradient-clipping factor ``min(1, max_grad_norm / (||sum_i g_i|| + 1e-6))``.
- Adam (``lr``, ``beta1``, ``beta2``, ``eps``): ``scale_k = lr * (1 - beta1) / (1 - beta1**k)`` and
  ``P = 1 / (sqrt(v_hat_k) + eps)`` elementwise, where ``v_hat_k = v_k / (1 - beta2**k)`` is the
  bias-corrected second moment *after* step ``k`` has folded in this minibatch's (clipped) gradient,
  i.e. exactly the denominator that step ``k`` divided by. For plain SGD (no momentum), ``scale_k =
  lr`` and ``P = 1``.
- Sample ``i``'s fresh contribution to the parameter update of step ``k`` is
  ``u_i = -scale_k * c * P * g_i`` (the momentum carried over from earlier steps is not part of it).
- Through Adam's first moment the same gradient moves the parameters again at every later step
  ``s``, by ``beta1**(s-k) * a_s * c * g_i`` with ``a_s = scale_s * P_s`` (step ``s``'s own learning
  rate and second moment). Summed over the ``n`` steps counted, the factor is
  ``D_k = sum_{s=k}^{k+n-1} beta1**(s-k) * a_s`` (computed backwards, ``E_s = a_s + beta1 * E_{s+1}``),
  with ``n = min(momentum_horizon, steps left in the learn() call)``: the horizon is the end of the
  `learn()` call, bounded by `momentum_horizon` (run.json; by default the smallest ``n`` with
  ``beta1**n <= 1e-9``, 197 steps at ``beta1 = 0.9``). Each later step's gradient and second moment
  are held as recorded: the attribution is first order in the sample's own gradient; what a changed
  parameter does to later gradients (weight decay's term included) is not counted. Sample ``i``'s
  momentum-total update is ``U_i = -c * D_k * g_i``.
- Watched pairs ``(s_w, a_w)``, ``w = 0 .. W-1`` (run.json's `watch`): ``q_w = grad_theta log
  pi(a_w|s_w)`` at the parameters of step ``k`` (before it), ``theta_k``; ``theta_{k+1}`` the
  parameters after it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 2

TABLES = ("transitions", "samples", "updates", "episodes", "momentum", "influence", "influence_steps")

DEFAULT_TABLES = ("transitions", "samples", "updates", "episodes")
INFLUENCE_TABLES = ("influence", "influence_steps")
"""What ``InstrumentedPPO`` and the runner record unless told otherwise (``momentum`` is asked for)."""


@dataclass(frozen=True)
class Column:
    """One column of one ledger table."""

    name: str
    table: str
    dtype: pa.DataType
    unit: str
    definition: str


def _c(table: str, name: str, dtype: pa.DataType, unit: str, definition: str) -> Column:
    return Column(name=name, table=table, dtype=dtype, unit=unit, definition=" ".join(definition.split()))


I64, I32, I16, F32, F64, BOOL = pa.int64(), pa.int32(), pa.int16(), pa.float32(), pa.float64(), pa.bool_()


def _sample_keys(table: str) -> tuple[Column, ...]:
    """The key columns of a table with one row per sample (or per sample and watched pair)."""
    return (
        _c(table, "rollout", I32, "index", "Rollout index; with epoch, minibatch, t, env joins `samples`."),
        _c(table, "epoch", I16, "index", "PPO epoch within the rollout (0-based)."),
        _c(table, "minibatch", I32, "index", "Minibatch index within the epoch (0-based)."),
        _c(table, "t", I32, "step", "Step index of the sample; joins `transitions.t`."),
        _c(table, "env", I16, "index", "Env index of the sample; joins `transitions.env`."),
    )


COLUMNS: tuple[Column, ...] = (
    # ------------------------------------------------------------------ transitions
    _c(
        "transitions",
        "rollout",
        I32,
        "index",
        "Rollout index within the run (0-based), one per `train()` call.",
    ),
    _c("transitions", "t", I32, "step", "Step index within the rollout, 0..n_steps-1."),
    _c("transitions", "env", I16, "index", "Index of the environment in the VecEnv."),
    _c(
        "transitions",
        "episode",
        I64,
        "index",
        "Per-env episode counter over the whole run (0-based); (env, episode) identifies an episode.",
    ),
    _c(
        "transitions",
        "state_id",
        I64,
        "id",
        """Identity of the state in which the action was taken: `info["state_id"]` of that state when the
        env provides it (on every step and reset), else a 64-bit hash of the observation's bytes as
        stored in the rollout buffer (FNV-1a over zero-padded 8-byte words, then the splitmix64
        finalizer; `rledger.collection.obs_hash_rows`), as int64.""",
    ),
    _c(
        "transitions",
        "action",
        pa.list_(F32),
        "action",
        "The action as stored in the rollout buffer (the sampled, unclipped action; a 1-list for Discrete).",
    ),
    _c(
        "transitions",
        "reward",
        F32,
        "reward",
        "Reward returned by the VecEnv for this step (under VecNormalize the normalized reward PPO trains "
        "on; the runner then records the env's own as the info key `raw_reward`).",
    ),  # fmt: skip
    _c(
        "transitions",
        "gae_reward",
        F32,
        "reward",
        """Reward entered into GAE: `reward` plus `gamma * V(terminal_obs)` when the episode was truncated
        by a time limit (SB3's timeout bootstrap), else equal to `reward`.""",
    ),
    _c("transitions", "terminated", BOOL, "flag", "The episode ended in a terminal state at this step."),
    _c("transitions", "truncated", BOOL, "flag", "The episode was cut by a time limit at this step."),
    _c("transitions", "value", F32, "return", "V(s_t) from the policy at collection time."),
    _c("transitions", "log_prob", F32, "nats", "log pi_old(a_t|s_t) at collection time."),
    _c(
        "transitions",
        "advantage",
        F32,
        "return",
        "Raw GAE(lambda) advantage from SB3's `compute_returns_and_advantage`, before any normalization.",
    ),
    _c("transitions", "return", F32, "return", "TD(lambda) return target; equals `advantage + value`."),
    # ------------------------------------------------------------------ samples
    _c("samples", "rollout", I32, "index", "Rollout index; joins `transitions.rollout`."),
    _c("samples", "epoch", I16, "index", "PPO epoch within the rollout (0-based)."),
    _c("samples", "minibatch", I32, "index", "Minibatch index within the epoch (0-based)."),
    _c("samples", "t", I32, "step", "Step index of the sample; joins `transitions.t`."),
    _c("samples", "env", I16, "index", "Env index of the sample; joins `transitions.env`."),
    _c(
        "samples",
        "advantage_used",
        F32,
        "normalized advantage",
        """A_i as the loss used it: (A - mean) / (std + 1e-8) over the minibatch when
        `normalize_advantage` is on and B > 1, else the raw advantage.""",
    ),
    _c("samples", "ratio", F32, "ratio", "r_i = exp(log pi(a_i|s_i) - log pi_old(a_i|s_i))."),
    _c(
        "samples",
        "clipped",
        BOOL,
        "flag",
        """Clipping zeroes the sample's policy gradient: (A_i > 0 and r_i > 1 + clip_range) or
        (A_i < 0 and r_i < 1 - clip_range). Not SB3's clip_fraction (see `updates`).""",
    ),
    _c("samples", "score_norm", F32, "grad norm", "||s_i|| = ||grad_theta log pi(a_i|s_i)||."),
    _c(
        "samples",
        "pg_grad_norm",
        F32,
        "grad norm",
        "||g_i^pg||; equals |A_i| * r_i * score_norm / B when not clipped, 0 when clipped.",
    ),
    _c(
        "samples",
        "entropy_grad_norm",
        F32,
        "grad norm",
        "||g_i^ent|| = ent_coef / B * ||grad_theta H(pi(.|s_i))||; 0 when ent_coef is 0.",
    ),
    _c(
        "samples",
        "value_grad_norm",
        F32,
        "grad norm",
        """||g_i^vf|| = vf_coef / B * ||grad_theta (R_i - V_pred_i)^2|| (V_pred clipped as SB3 does when
        clip_range_vf is set; 0 where that clipping stops the gradient).""",
    ),
    _c(
        "samples",
        "loss_grad_norm",
        F32,
        "grad norm",
        "||g_i|| = ||g_i^pg + g_i^ent + g_i^vf||, before clipping.",
    ),
    _c(
        "samples",
        "adam_update_norm",
        F32,
        "parameter change",
        """||u_i|| = scale_k * c * ||P * g_i||: the norm of the sample's fresh contribution to the
        parameter update of its optimizer step (all three loss terms: policy, entropy, value).""",
    ),
    _c(
        "samples",
        "pg_adam_update_norm",
        F32,
        "parameter change",
        """scale_k * c * ||P * g_i^pg||: the policy-gradient term's own share of u_i (the parameters
        log pi depends on only; no value or entropy term). 0 when clipped. Schema version 2.""",
    ),
    _c(
        "samples",
        "entropy_adam_update_norm",
        F32,
        "parameter change",
        "scale_k * c * ||P * g_i^ent||: the entropy term's share of u_i; 0 when ent_coef is 0. Schema version 2.",
    ),
    _c(
        "samples",
        "value_adam_update_norm",
        F32,
        "parameter change",
        "scale_k * c * ||P * g_i^vf||: the value loss's share of u_i (the critic's). Schema version 2.",
    ),
    _c(
        "samples",
        "self_reinforcement",
        F32,
        "nats",
        """First-order change of log pi(a_i|s_i) caused by the policy-loss part of the sample's own
        contribution: s_i . (-scale_k * c * P * g_i^pg) = scale_k * c * A_i * r_i / B * sum(P * s_i^2).
        Has the sign of A_i when not clipped; 0 when clipped.""",
    ),
    # ------------------------------------------------------------------ updates
    _c("updates", "rollout", I32, "index", "Rollout index."),
    _c("updates", "epoch", I16, "index", "PPO epoch (0-based)."),
    _c("updates", "minibatch", I32, "index", "Minibatch index within the epoch (0-based)."),
    _c(
        "updates",
        "opt_step",
        I64,
        "index",
        """Optimizer step count k after this step (Adam's `step`); -1 for the minibatch at which
        `target_kl` stopped training, which made no step.""",
    ),
    _c("updates", "lr", F64, "learning rate", "Learning rate of the optimizer at this step."),
    _c(
        "updates",
        "grad_norm",
        F32,
        "grad norm",
        "Global norm of the minibatch gradient before clipping (returned by clip_grad_norm_); NaN if no step.",
    ),
    _c(
        "updates",
        "clip_coef",
        F32,
        "factor",
        "c = min(1, max_grad_norm / (grad_norm + 1e-6)), the factor applied to the gradient; NaN if no step.",
    ),
    _c("updates", "approx_kl", F32, "nats", "SB3's approx_kl: mean((r - 1) - log r) over the minibatch."),
    _c("updates", "policy_loss", F32, "loss", "-mean(min(A r, A clip(r))) over the minibatch."),
    _c("updates", "value_loss", F32, "loss", "mean((R - V_pred)^2) over the minibatch (before vf_coef)."),
    _c("updates", "entropy_loss", F32, "loss", "-mean(entropy) over the minibatch (before ent_coef)."),
    _c(
        "updates",
        "clip_fraction",
        F32,
        "fraction",
        "SB3's clip_fraction: share of the minibatch with |r - 1| > clip_range.",
    ),
    _c("updates", "batch_size", I32, "samples", "B, the number of samples in the minibatch."),
    _c(
        "updates",
        "stopped_early",
        BOOL,
        "flag",
        "approx_kl exceeded 1.5 * target_kl at this minibatch; training stopped before stepping.",
    ),
    # ------------------------------------------------------------------ momentum
    *_sample_keys("momentum"),
    _c(
        "momentum",
        "momentum_update_norm",
        F32,
        "parameter change",
        """||U_i|| = c * ||D_k * g_i||: the norm of the sample's total contribution to the parameters'
        change through Adam's first moment over the steps counted (all three loss terms). At least
        `adam_update_norm`, which is its first step's share.""",
    ),
    _c(
        "momentum",
        "pg_momentum_update_norm",
        F32,
        "parameter change",
        "c * ||D_k * g_i^pg||: the policy-gradient term's share of U_i; 0 when clipped.",
    ),
    _c(
        "momentum",
        "momentum_self_reinforcement",
        F32,
        "nats",
        """First-order change of log pi(a_i|s_i), at the parameters of step k, caused by the policy-loss
        part of the sample's total contribution: s_i . (-c * D_k * g_i^pg) = c * A_i * r_i / B *
        sum(D_k * s_i^2). The momentum-total counterpart of `self_reinforcement`.""",
    ),
    _c(
        "momentum",
        "momentum_steps",
        I32,
        "steps",
        "n, the optimizer steps counted (k to k + n - 1): the horizon or the steps left in `learn()`.",
    ),
    _c(
        "momentum",
        "momentum_cut",
        F64,
        "fraction",
        """beta1**n: the share of the gradient's first-moment weight that the steps counted leave out
        (the end of `learn()` or the horizon cut it off; (1 - beta1) * sum_{j<n} beta1**j = 1 - beta1**n
        is applied).""",
    ),
    # ------------------------------------------------------------------ influence
    *_sample_keys("influence"),
    _c("influence", "watch", I16, "index", "The watched pair w: its index in run.json's `watch` list."),
    _c(
        "influence",
        "influence",
        F32,
        "nats",
        """q_w . u_i = q_w . (-scale_k * c * P * g_i): the first-order change of log pi(a_w|s_w) that
        the sample's fresh contribution to step k causes (all three loss terms), at theta_k.""",
    ),
    _c(
        "influence",
        "momentum_influence",
        F32,
        "nats",
        """q_w . U_i = q_w . (-c * D_k * g_i): the same for the sample's total contribution through
        Adam's first moment over the steps `momentum.momentum_steps` counts (q_w held at theta_k).""",
    ),
    # ------------------------------------------------------------------ influence_steps
    _c("influence_steps", "rollout", I32, "index", "Rollout index; joins `updates.rollout`."),
    _c("influence_steps", "epoch", I16, "index", "PPO epoch (0-based)."),
    _c("influence_steps", "minibatch", I32, "index", "Minibatch index within the epoch (0-based)."),
    _c("influence_steps", "watch", I16, "index", "The watched pair w: its index in run.json's `watch` list."),
    _c("influence_steps", "log_prob_before", F32, "nats", "log pi(a_w|s_w) at theta_k, before the step."),
    _c("influence_steps", "log_prob_after", F32, "nats", "log pi(a_w|s_w) at theta_{k+1}, after the step."),
    _c(
        "influence_steps",
        "change",
        F64,
        "nats",
        "log_prob_after - log_prob_before: the step's actual change (float32 log-probabilities).",
    ),
    _c(
        "influence_steps",
        "predicted",
        F64,
        "nats",
        """q_w . (theta_{k+1} - theta_k): the step's first-order prediction, its whole update (the
        fresh contributions of its samples and the momentum carried from earlier steps).""",
    ),
    _c(
        "influence_steps",
        "fresh",
        F64,
        "nats",
        """sum over the step's samples of `influence.influence`: the part of `predicted` made by this
        step's own samples; predicted - fresh is the momentum carried from earlier steps.""",
    ),
    _c(
        "influence_steps",
        "gap",
        F64,
        "nats",
        "change - predicted: the linearization gap of the step (second and higher order).",
    ),
    # ------------------------------------------------------------------ episodes
    _c("episodes", "rollout", I32, "index", "Rollout during which the episode ended."),
    _c("episodes", "env", I16, "index", "Env index."),
    _c("episodes", "episode", I64, "index", "Per-env episode counter; joins `transitions.episode`."),
    _c("episodes", "return", F64, "reward", "Undiscounted sum of `reward` over the episode."),
    _c("episodes", "length", I32, "steps", "Number of steps in the episode."),
    _c(
        "episodes",
        "terminated",
        BOOL,
        "flag",
        "The episode ended in a terminal state (else it was truncated).",
    ),
)

INFO_DTYPE = F64
"""dtype of the user-named scalar `info` keys (in `transitions`, per step, and `episodes`, summed)."""


def columns(table: str) -> tuple[Column, ...]:
    """The contract columns of ``table``, in order."""
    if table not in TABLES:
        raise KeyError(f"unknown ledger table {table!r}; known tables: {', '.join(TABLES)}")
    return tuple(c for c in COLUMNS if c.table == table)


def arrow_schema(table: str, info_keys: tuple[str, ...] = ()) -> pa.Schema:
    """The pyarrow schema of ``table``; user info keys are appended for transitions and episodes."""
    fields = [pa.field(c.name, c.dtype, nullable=False) for c in columns(table)]
    if table in ("transitions", "episodes"):
        fields += [pa.field(k, INFO_DTYPE, nullable=False) for k in info_keys]
    return pa.schema(fields)


def check_info_keys(info_keys: tuple[str, ...]) -> None:
    """Refuse info keys that would collide with a contract column."""
    reserved = {c.name for c in COLUMNS if c.table in ("transitions", "episodes")}
    for key in info_keys:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(
                f"info_keys: {key!r} is not a valid column name; use an identifier like 'hidden_reward'"
            )
        if key in reserved:
            raise ValueError(f"info_keys: {key!r} collides with a ledger column of the same name; rename it")
    if len(set(info_keys)) != len(info_keys):
        raise ValueError(f"info_keys: duplicate names in {list(info_keys)}")


def markdown() -> str:
    """The schema as Markdown; ``docs/ledger.md`` is exactly this text."""
    lines = [
        "# The ledger: tables and columns",
        "",
        "Generated from `src/rledger/ledger/schema.py` (`python -m rledger.ledger.schema > docs/ledger.md`);",
        "a test checks that this file matches the schema. Schema version " + str(SCHEMA_VERSION) + ".",
        "",
        "A run directory holds `run.json` and one folder per table, each with one Parquet file per",
        "rollout (`part-000000.parquet`, ...), written to a temporary name and renamed when whole, and",
        "`manifest/part-000000.json`, ...: written after a rollout's parts, it lists the tables written for",
        "that rollout and their row counts. Readers (`Ledger`, its DuckDB views) take a rollout's parts only",
        "when its manifest exists, so a rollout appears whole or not at all across its tables, even after a",
        "kill -9; each part is checked to be readable Parquet with the schema's columns and types (a foreign",
        "or broken part is an error naming the file). `Ledger(path).check()` verifies the whole ledger (a",
        "manifest for every rollout `run.json` counts, each listed part present with its row count); the",
        "runner does so before writing `DONE`. Ledgers written before manifests are read part by part.",
        "",
        "## Notation",
        "",
    ]
    doc = sys.modules[__name__].__doc__ or ""
    notation = doc.split("Notation used in the definitions", 1)[1]
    lines += ["Notation used in the definitions" + notation.rstrip(), ""]
    for table in TABLES:
        lines += [f"## `{table}`", "", "| column | dtype | unit | definition |", "|---|---|---|---|"]
        for c in columns(table):
            lines.append(f"| `{c.name}` | {c.dtype} | {c.unit} | {c.definition} |")
        if table == "transitions":
            lines.append(
                "| *info keys* | double | env-defined | Each scalar `info` key named in `info_keys`, per step. |"
            )
        if table == "episodes":
            lines.append(
                "| *info keys* | double | env-defined | Each named `info` key summed over the episode. |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
