"""Stage 1: fine-tune the teacher (all weights) with cross-entropy; keep its best epoch on validation."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, set_seed

from .. import bundles, normalize
from .. import pooling as pool
from ..config import stable_section
from ..errors import UserError
from ..evaluate import predict_proba, selection_row
from ..fileio import sha256
from ..training import CrossEntropy, compute_metrics, with_bias
from .base import Kind, Stage, StageEnv, register

log = logging.getLogger("distillora")

# data keys that only evaluation reads: changing them re-evaluates, it does not retrain
EVALUATION_ONLY_DATA_KEYS = ("extra_tests", "dev_sets", "category_column")


@register
def plan(cfg, resolved: dict, depth: int) -> list[Stage]:
    # extra_train is fingerprinted below by its files' content, not by the paths that name them
    data = stable_section(resolved, "data", drop=EVALUATION_ONLY_DATA_KEYS + ("extra_train",))
    # allow_pickle: a permission, not a setting; the probe's learning rate only when a probe is trained
    # teacher.pooling as set (`first`, the default, left out: NEW_KEY_DEFAULTS). Not as `auto` resolves it: a
    # sweep or a report of a finished run plans on a machine that may lack the source, and every student
    # reads what the saved teacher records. (A study resolves `auto` in its cfg before planning, so the
    # objective below names what was trained.)
    teacher = stable_section(resolved, "teacher", drop=("allow_pickle",) + (
        () if cfg.teacher.linear_probe_epochs else ("linear_probe_learning_rate",)))
    pooling = cfg.teacher.pooling
    return [Stage(
        name="teacher", kind=Kind.TEACHER, section="teacher", consumes=(),
        # group weights (and then the column that names the groups) and the logit adjustment only when
        # set, so runs without them keep the fingerprints they had
        fingerprint_inputs=(data, cfg.seed, cfg.selection_metric, teacher, cfg.class_weights)
        + ((cfg.group_weights, cfg.data.category_column) if cfg.group_weights else ())
        + ((("logit_adjustment", cfg.logit_adjustment),) if cfg.logit_adjustment else ())
        # teacher.debias is in `teacher` above; the bias model reads the training texts (data, extra_train)
        # and the primary seed (the folds, as the validation carve), both in here already
        # extra training files by content: an edited file retrains, a moved one does not (a missing one:
        # load_splits, which runs first, refused it)
        + ((("extra_train", [sha256(Path(p).expanduser()) if Path(p).expanduser().is_file() else None
                             for p in cfg.data.extra_train]),) if cfg.data.extra_train else ())
        # teacher.restarts chooses on the development sets: their content (as extra_train's) and the rule
        + ((("restart_dev_sets", {n: sha256(Path(p).expanduser()) if Path(p).expanduser().is_file() else None
                                  for n, p in cfg.data.dev_sets.items()}),) if cfg.teacher.restarts > 1 else ()),
        teacher_layers=list(range(1, depth + 1)),
        # (the report reads the soup's or the restarts' clause after the first "; ")
        objective="cross-entropy" + (f" in a product of experts with a bag-of-words bias model (weight "
                                     f"{cfg.teacher.debias:g})" if cfg.teacher.debias else "")
        + (", the head reading the mean of the last hidden states" if pooling == "mean" else "")
        + ", all weights fine-tuned" + (f" after a linear probe of the new head ({cfg.teacher.linear_probe_epochs:g} epoch"
                                        f"{'' if cfg.teacher.linear_probe_epochs == 1 else 's'}, LP-FT)"
                                        if cfg.teacher.linear_probe_epochs else "") + (f"; a uniform soup of {cfg.teacher.soup} such teachers"
                                        if cfg.teacher.soup > 1 else "")
        + (f"; the best of {cfg.teacher.restarts} such teachers on the selection score" if cfg.teacher.restarts > 1
           else ""),
        train=lambda ctx, key, fp: train(ctx.env, ctx.source, fp, key), action=f"fine-tuning {cfg.teacher.source}")]


def head_pooling(cfg, source: str | None = None) -> str:
    """teacher.pooling as the teacher's source resolves it (`auto`: `pooling.of_source`); `source`: the
    resolved source, when the caller has it.

    Raises:
        UserError: `auto` with a source that cannot be found or whose pooling cannot be looked up."""
    if cfg.teacher.pooling != "auto":
        return cfg.teacher.pooling
    return pool.of_source(source if source is not None else bundles.resolve(cfg.teacher.source,
                                                                            cfg.teacher.allow_pickle))


def load_pretrained(source: str, label_names: list[str], allow_pickle: bool = False, *, pooling: str | None = None,
                    new_weights: bool = False):
    """The pretrained encoder with a fresh head of len(label_names) classes (the head is new by design: it is
    trained here), reading `pooling` (distillora.pooling; None: what the source records, as a distillora
    model saved as the source does, else the first token). Only safetensors weights are read unless
    `allow_pickle`. With `new_weights`, returns
    (model, the names of the weights the checkpoint did not hold), as transformers' loading info reports
    them: the head, and whatever else the architecture adds to the checkpoint (e.g. a pooler)."""
    model, info = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(label_names), use_safetensors=None if allow_pickle else True,
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
        output_loading_info=True,
    )
    model = pool.apply_saved(model) if pooling is None else pool.attach(model, pooling)
    return (model, set(info["missing_keys"])) if new_weights else model


def linear_probe(env: StageEnv, model, new: set[str], fingerprint: str, key: str):
    """LP-FT's first step (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features"): train
    only the weights in `new` (those the checkpoint lacked: the head) on the frozen pretrained body for
    teacher.linear_probe_epochs at teacher.linear_probe_learning_rate, with teacher.train's other settings
    and the teacher's own objective. Fine-tuning then starts from a head that fits the pretrained
    features, so its first steps' large gradients do not reshape them toward a random head. Returns
    (model, its stats); every weight learns again afterwards. Works and logs under `<key>.linear_probe`."""
    t = env.cfg.teacher
    params = dict(model.named_parameters())
    if not new & set(params):
        raise UserError(f"teacher.linear_probe_epochs = {t.linear_probe_epochs:g}: {t.source} loaded every "
                        f"weight from its checkpoint, so no new head is left to probe; set "
                        f"teacher.linear_probe_epochs: 0")
    frozen = [p for n, p in params.items() if n not in new and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    tc = dataclasses.replace(t.train, epochs=t.linear_probe_epochs, learning_rate=t.linear_probe_learning_rate)
    try:
        return env.fit(model, tc, f"{key}.linear_probe", fingerprint, **fit_inputs(env, tc))
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def wise_ft(finetuned, pretrained, alpha: float):
    """WiSE-FT (Wortsman et al., CVPR 2022): every weight the two models share becomes
    alpha * fine-tuned + (1 - alpha) * pretrained; the head, which the pretrained model does not have
    (it is new), stays the fine-tuned one. Returns a new model; neither input is changed."""
    import copy

    out = copy.deepcopy(finetuned)
    pre = pretrained.state_dict()
    state = out.state_dict()
    for name, tensor in state.items():
        if name in pre and not name.startswith("classifier") and pre[name].shape == tensor.shape \
                and tensor.is_floating_point():
            tensor.mul_(alpha).add_(pre[name].to(tensor.dtype), alpha=1 - alpha)
    return out


def _weights(model) -> list[tuple[str, torch.Tensor]]:
    """A model's floating-point parameters and buffers, each once: a tied weight (e.g. a masked-LM's
    decoder sharing the word embeddings) is listed under one name, as `named_parameters` lists it."""
    return [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]


@torch.no_grad()
def add_into(total, model) -> None:
    """`total`'s weights += `model`'s (same architecture): a soup's running sum."""
    other = dict(_weights(model))
    for name, t in _weights(total):
        t.add_(other[name])


@torch.no_grad()
def scale(model, factor: float) -> None:
    for _, t in _weights(model):
        t.mul_(factor)


def uniform_soup(models: list) -> torch.nn.Module:
    """A uniform model soup (Wortsman et al., ICML 2022): models[0] with every floating-point weight
    replaced by the mean of that weight over `models` (fine-tuned from the same pretrained weights and
    head initialisation). Changes models[0] in place."""
    for m in models[1:]:
        add_into(models[0], m)
    scale(models[0], 1 / len(models))
    return models[0]


# Training seed of member k of a soup or of restarts (k = 0 is the run's own seed, so member 1 is the
# teacher a run with one teacher trains): far apart, so that `--seeds` runs share no member's data order
# or dropout.
MEMBER_SEED_STRIDE = 1000


def fit_inputs(env: StageEnv, tc) -> dict:
    """The `StageEnv.fit` arguments that make the teacher's loss: none (`fit`'s class-weighted
    cross-entropy on the training split), or under `teacher.debias` the training split with the bias
    model's log-probabilities (`env.teacher_bias`) attached and the product of experts that reads them.
    The shared split stays without them: no other stage's objective needs to drop them."""
    if not env.cfg.teacher.debias:
        return {}
    return {"train": with_bias(env.train, env.teacher_bias),
            "objective": CrossEntropy(env.class_weights(tc), env.logit_offset(tc), product_of_experts=True)}


def _scored(env: StageEnv, model, encoded) -> tuple[np.ndarray, np.ndarray]:
    """(fp32 class probabilities, labels) of `model` on an encoded labelled split."""
    return predict_proba(model, encoded, env.tokenizer)[0], np.array([x["labels"] for x in encoded.items])


def _validation_stats(env: StageEnv, model) -> dict:
    return dict(compute_metrics(_scored(env, model, env.validation)))


def selection(env: StageEnv, model) -> dict:
    """The model's selection row (`evaluate.selection_row`): `selection_metric` on validation and on each
    development set, from fp32 probabilities as the study's evaluation computes them, and their mean."""
    sets = {"validation": env.validation, **env.dev_sets}
    return selection_row({name: _scored(env, model, enc) for name, enc in sets.items()},
                         env.cfg.selection_metric, env.cfg.data.label_names)


def _main_process_score(score: float) -> float:
    """The main process's `score` on every process. Under `accelerate launch` each process scores each
    member itself; a difference in rounding must not let two processes keep different teachers (the
    later stages would distil from a teacher other than the one saved)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if PartialState().num_processes == 1:
        return score
    return broadcast_object_list([score], from_process=0)[0]


def _probed_head(env: StageEnv, source: str, fingerprint: str, key: str) -> tuple[dict, dict]:
    """teacher.linear_probe_epochs: the new head trained once on the frozen pretrained body (`linear_probe`,
    under the stage's own key and training seed), as {weight name: tensor}, and the probe's stats."""
    set_seed(env.cfg.seed)
    model, new = load_pretrained(source, env.cfg.data.label_names, env.cfg.teacher.allow_pickle,
                                 pooling=head_pooling(env.cfg, source), new_weights=True)
    normalize.attach(model.config, normalize.resolve(env.cfg.data.normalize))
    model, stats = linear_probe(env, model, new, fingerprint, key)
    head = {n: p.detach().clone() for n, p in model.named_parameters() if n in new}
    return head, {f: stats[f] for f in ("validation", "seconds", "steps", "best_checkpoint", "resumed_from")}


def _members(env: StageEnv, source: str, fingerprint: str, key: str, n: int, head: dict | None = None):
    """Fine-tune `n` teachers, one after the other, yielding (training seed, stage key, model, stats) for
    each. Every member starts from the same head (the seed's initialisation, or `head`, the linear probe's,
    when given); its own training seed moves the data order and dropout. Member 1 works and logs under the
    stage's own key (without restarts or a soup it is the one teacher); member k under `<key>.member<k>`,
    its own work directory, so each resumes on its own after a kill."""
    tc = env.cfg.teacher.train
    for k in range(n):
        set_seed(env.cfg.seed)
        model = load_pretrained(source, env.cfg.data.label_names, env.cfg.teacher.allow_pickle,
                                pooling=head_pooling(env.cfg, source))
        if head:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in head:
                        p.copy_(head[name])
        # saved in config.json and copied into every student built from this teacher
        normalize.attach(model.config, normalize.resolve(env.cfg.data.normalize))
        seed = env.cfg.seed + MEMBER_SEED_STRIDE * k
        member_env = env if k == 0 else dataclasses.replace(env, cfg=dataclasses.replace(env.cfg, seed=seed))
        member_key = key if k == 0 else f"{key}.member{k + 1}"
        model, stats = member_env.fit(model, tc, member_key, fingerprint, **fit_inputs(env, tc))
        yield seed, member_key, model, stats
        del model, stats  # the caller keeps what it needs: no third model in memory while the next loads


MEMBER_FIELDS = ("validation", "loss", "epoch_losses", "seconds", "steps", "best_checkpoint", "resumed_from")


def _totals(members: list[dict]) -> dict:
    """The seconds and steps of every member: all were spent on the one teacher the stage keeps."""
    return {"seconds": round(sum(st["seconds"] for st in members), 2), "steps": sum(st["steps"] for st in members)}


def _soup(env: StageEnv, members) -> tuple:
    soup, rows = None, []
    for seed, _, model, stats in members:
        rows.append((seed, stats))
        if soup is None:
            soup = model
        else:
            add_into(soup, model)  # a running sum: one member in memory besides it
            del model
    model, stats = soup, rows[0][1]
    if len(rows) > 1:
        scale(model, 1 / len(rows))
        stats = {**stats, **_totals([st for _, st in rows]),
                 "loss": None,  # the soup was not trained: each member's loss is in its row
                 "best_checkpoint": None, "resumed_from": None,
                 "soup": [{"seed": seed, **{f: st[f] for f in MEMBER_FIELDS}} for seed, st in rows]}
        # the soup's own, in fp32 (members' figures come from the Trainer's pass, in its precision)
        stats["validation"] = _validation_stats(env, model)
    return model, stats


def _best_of(env: StageEnv, members) -> tuple:
    """teacher.restarts: the member with the highest selection score (ties: the earlier member), never
    read on test; each member's row records its scores. The kept model's stats are its own, with the
    seconds and steps of all members (they were all spent) and `log_key`, the stage key its training
    log is under (the report's loss plot reads it)."""
    best, rows = None, []
    for seed, member_key, model, stats in members:
        row = {"seed": seed, "log_key": member_key, "selection": selection(env, model),
               **{f: stats[f] for f in MEMBER_FIELDS}}
        row["selection"]["score"] = _main_process_score(row["selection"]["score"])
        log.info("teacher restart %d (training seed %d): selection score %.4f", len(rows) + 1, seed,
                 row["selection"]["score"])
        rows.append(row)
        if best is None or row["selection"]["score"] > best[0]["selection"]["score"]:
            best = (row, model, stats)
        del model, stats  # a member that is not the best so far is freed before the next one loads
    row, model, stats = best
    log.info("teacher: kept restart %d of %d (training seed %d) on the selection score", rows.index(row) + 1,
             len(rows), row["seed"])
    return model, {**stats, **_totals(rows), "log_key": row["log_key"],
                   "restarts": [{**r, "kept": r is row} for r in rows]}


def train(env: StageEnv, source: str, fingerprint: str, key: str = "teacher"):
    t = env.cfg.teacher
    head, probe = _probed_head(env, source, fingerprint, key) if t.linear_probe_epochs else (None, None)
    if t.restarts > 1:
        model, stats = _best_of(env, _members(env, source, fingerprint, key, t.restarts, head))
    else:
        model, stats = _soup(env, _members(env, source, fingerprint, key, t.soup, head))
    if probe is not None:  # its time was spent on this teacher too (`steps` stay the fine-tuning's)
        stats = {**stats, "seconds": round(stats["seconds"] + probe["seconds"], 2), "linear_probe": probe}
    alpha = t.wise_alpha
    if alpha < 1:
        model = wise_ft(model, load_pretrained(source, env.cfg.data.label_names, t.allow_pickle), alpha)
        # the kept model is the interpolated one: its validation figures replace the fine-tuned model's
        stats["validation_before_wise"] = stats["validation"]
        stats["validation"] = _validation_stats(env, model)
        stats["wise_alpha"] = alpha
    return model, stats
