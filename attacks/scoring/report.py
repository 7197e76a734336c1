"""The score report: ``results.json`` (every image and every figure), ``report.md`` and a one-screen summary.

Field by field in docs/scoring.md. Distances are L2 on [0, 1] of verified uint8
adversarials; an image no attack fooled scores its worst-case value
(:func:`attacks.scoring.pipeline.worst_case_l2`) and counts as not fooled; a misclassified clean
image scores 0. JSON holds ``null`` where a distance is infinite (not fooled).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attacks.scoring.pipeline import Scores, scored
from avc_common import __version__

WORST_CASE_RULE = ("an image no attack fooled scores the L2 distance from its clean image to the farthest image "
                   "in [0, 1]^d, sqrt(sum(max(x, 1 - x)^2)): larger than any perturbation could be")
# results.json's format: bumped when a field is removed, renamed or changes meaning, never for a new field
# (docs/scoring.md "Report"), so that a reader can refuse a report it would misread
SCHEMA_VERSION = 1


@dataclass
class RunInfo:
    """What the run was: the command, model, data and suite settings, for the report's header."""

    command: str
    model: dict[str, Any]
    class_names: list[str]
    data: dict[str, Any]
    budget: int
    pooled: bool
    seed: int
    batch_images: int
    attacks: dict[str, str]  # name -> settings (repr)
    notes: list[str] = field(default_factory=list)
    concurrency: int = 1  # units run at once in this session: information only, the results do not depend on it
    workers: int | None = None  # Ray workers that ran this session's units (None: this process ran them)
    chain: bool = False  # each attack started from the best adversarials of the attacks before it

    @property
    def budget_rule(self) -> str:
        if self.pooled:
            rule = (f"pooled: each attack may spend {self.budget} x (images in a chunk of at most {self.batch_images}) "
                    f"queries per chunk, wherever it likes (the competition's rule when one chunk holds every image)")
        else:
            rule = f"per image: each attack may spend at most {self.budget} queries on each image"
        if self.chain:
            rule += ("; chained: each attack started from the closest adversarials of the attacks before it, so an "
                     "attack's figures are the best after it")
        return rule


def header() -> dict[str, Any]:
    """The fields that open every results.json: its format, when it was written, and by which version of the code."""
    return {"schema_version": SCHEMA_VERSION, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "toolkit_version": __version__}


def _finite(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def _stats(values: np.ndarray) -> dict[str, float | None]:
    return {"mean": float(values.mean()) if len(values) else None,
            "median": float(np.median(values)) if len(values) else None}


def build_results(info: RunInfo, scores: Scores, indices: np.ndarray, names: list[str], labels: np.ndarray,
                  worst: np.ndarray, total_images: int, wall_s: float, complete: bool,
                  error: str | None = None) -> dict[str, Any]:
    """The whole report as JSON-ready data; ``worst`` holds each scored image's worst-case value."""
    n = scores.distances.shape[1]
    labels, worst = labels[:n], worst[:n]
    best = scores.best
    correct = best > 0
    fooled = correct & np.isfinite(best)
    score = scored(best, worst)
    rows = np.flatnonzero(np.isfinite(best))
    unverified = rows[scores.verified_labels[rows] == labels[rows]]
    attacks = {}
    for a, name in enumerate(scores.names):
        d = scores.distances[a]
        hit = (d > 0) & np.isfinite(d)
        alone = scored(d, worst)
        attacks[name] = {"settings": info.attacks[name],
                         "success_rate": float(hit.sum() / max((d > 0).sum(), 1)), "fooled": int(hit.sum()),
                         **_stats(alone), "median_fooled": _stats(d[hit])["median"],
                         "wins": int(((scores.winner == a) & correct).sum()),
                         "queries_total": int(scores.queries[a].sum()), "queries_mean": float(scores.queries[a].mean()),
                         "queries_max": int(scores.queries[a].max()), "wall_time_s": float(scores.seconds[a]),
                         "model_calls": int(scores.calls[a]),
                         "images_per_call": float(scores.queries[a].sum() / max(scores.calls[a], 1))}
    summary = {"images": n, "total_images": total_images, **_stats(score),
               "clean_accuracy": float(correct.mean()), "misclassified": int((~correct).sum()),
               "fooled": int(fooled.sum()), "not_fooled": int((correct & ~fooled).sum()),
               "median_fooled": _stats(best[fooled])["median"],
               "queries": {"attacks_total": int(scores.queries.sum()),
                           "per_image_mean": float(scores.queries.sum(axis=0).mean()),
                           "verification": len(rows)},
               "unverified": [int(indices[i]) for i in unverified],
               "wall_time_s": float(scores.seconds.sum()), "session_wall_time_s": wall_s,
               "attacks": attacks, "reference": _reference(scores, score, worst)}
    images = [{"index": int(indices[i]), "name": names[i], "label": int(labels[i]), "distance": float(score[i]),
               "fooled": bool(fooled[i]), "misclassified": bool(not correct[i]),
               "winner": scores.names[scores.winner[i]] if fooled[i] else None,
               "adversarial_label": int(scores.verified_labels[i]) if fooled[i] else None,
               "attacks": {name: {"distance": _finite(scores.distances[a, i:i + 1])[0],
                                  "queries": int(scores.queries[a, i])} for a, name in enumerate(scores.names)},
               "reference": None if scores.reference is None else _finite(scores.reference[i:i + 1])[0]}
              for i in range(n)]
    return {**header(), "complete": complete, "error": error, "trades_avc_version": __version__,
            "command": info.command, "model": info.model, "data": info.data,
            "budget": {"rule": "pooled" if info.pooled else "per_image", "queries": info.budget,
                       "chained": info.chain, "description": info.budget_rule},
            "worst_case": WORST_CASE_RULE, "seed": info.seed, "batch_images": info.batch_images,
            "concurrency": info.concurrency, "workers": info.workers, "notes": info.notes, "summary": summary,
            "distances": score.tolist(),
            "images": images}


def _reference(scores: Scores, score: np.ndarray, worst: np.ndarray) -> dict[str, Any] | None:
    """The white-box reference beside the suite: medians, their ratio, and on how many images it got closer.

    The reference also starts from the suite's own adversarials, so it is never farther than the suite."""
    if scores.reference is None:
        return None
    ref = scored(scores.reference, worst)
    both = (ref > 0) & np.isfinite(scores.reference) & np.isfinite(scores.best)
    median_ref = float(np.median(ref))
    return {"method": "FMN L2 (attacks/whitebox/reference.py), uint8-verified", **_stats(ref),
            "fooled": int((np.isfinite(scores.reference) & (scores.reference > 0)).sum()),
            "suite_over_reference_median": float(np.median(score)) / median_ref if median_ref > 0 else None,
            "median_per_image_ratio": float(np.median(scores.best[both] / ref[both])) if both.any() else None,
            "closer_than_suite": int((ref < score).sum())}


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(results: dict[str, Any]) -> str:
    """``report.md``: the score, the suite, the reference, the rules and the model, in one page."""
    s = results["summary"]
    state = "complete" if results["complete"] else f"partial ({s['images']} of {s['total_images']} images)"
    lines = [f"# Black-box L2 score ({state})", "", f"Command: `{results['command']}`", ""]
    if results["error"]:
        lines += [f"**Stopped:** {results['error']}", ""]
    lines += [_row("images", "clean accuracy", "fooled", "not fooled", "mean L2", "median L2", "median L2 (fooled)"),
              _row(*["---"] * 7),
              _row(s["images"], f"{s['clean_accuracy']:.2%}", s["fooled"], s["not_fooled"], _fmt(s["mean"]),
                   _fmt(s["median"]), _fmt(s["median_fooled"])),
              "",
              _row("attack", "success rate", "median L2", "mean L2", "median L2 (fooled)", "wins", "queries/image",
                   "wall s", "images/call"),
              _row(*["---"] * 9)]
    for name, a in s["attacks"].items():
        lines.append(_row(name, f"{a['success_rate']:.2%}", _fmt(a["median"]), _fmt(a["mean"]),
                          _fmt(a["median_fooled"]), a["wins"], f"{a['queries_mean']:.0f} (max {a['queries_max']})",
                          f"{a['wall_time_s']:.1f}", f"{a['images_per_call']:.1f}"))
    lines.append("")
    if (ref := s["reference"]) is not None:
        lines += [f"White-box reference ({ref['method']}): median {_fmt(ref['median'])}, mean {_fmt(ref['mean'])}; "
                  f"suite / reference median {_fmt(ref['suite_over_reference_median'], '.3f')}; median per-image "
                  f"ratio {_fmt(ref['median_per_image_ratio'], '.3f')}; closer than the suite on "
                  f"{ref['closer_than_suite']} image(s).",
                  ""]
    q = s["queries"]
    on_workers = "" if results["workers"] is None else f", on {results['workers']} Ray workers"
    verified = (f"**{len(s['unverified'])} did not re-verify** (indices {s['unverified'][:10]})"
                if s["unverified"] else "all re-verified")
    lines += [f"- Score: an image's distance is the minimum over the attacks of the verified L2 on [0, 1] (uint8 "
              f"adversarial re-classified); a misclassified clean image scores 0; {results['worst_case']}.",
              f"- Budget: {results['budget']['description']}.",
              f"- Queries: {q['attacks_total']} by the attacks ({q['per_image_mean']:.0f} per image), "
              f"{q['verification']} to re-verify the winning adversarials; {verified}.",
              f"- Wall time: {s['wall_time_s']:.1f} s of attack time summed over units, which overlap when several "
              f"run at once ({results['concurrency']} at a time this session{on_workers}); "
              f"{s['session_wall_time_s']:.1f} s this session.",
              f"- Data: {json.dumps(results['data'])}; seed {results['seed']}; "
              f"{results['batch_images']} images per chunk.",
              *(f"- Note: {note}" for note in results["notes"]),
              "",
              "![distance CDF](cdf.png)",
              "",
              "![clean / adversarial / perturbation](gallery.png)",
              "",
              "## Suite",
              "",
              *(f"- `{name}`: `{a['settings']}`" for name, a in s["attacks"].items()),
              "",
              "## Model",
              "",
              *_model_lines(results["model"]),
              ""]
    return "\n".join(lines)


def _model_lines(model: dict[str, Any]) -> list[str]:
    """The manifest (or the server's ModelInfo) one field per line; long class-name lists cut (the JSON has all)."""
    lines = []
    for key, value in model.items():
        if isinstance(value, dict):
            lines += [f"- `{key}`:", *(f"  - `{k}`: `{json.dumps(_short(v))}`" for k, v in value.items())]
        else:
            lines.append(f"- `{key}`: `{json.dumps(value)}`")
    return lines


def _short(value: Any) -> Any:
    if isinstance(value, list) and len(value) > 12:
        return value[:10] + [f"... {len(value) - 10} more"]
    return value


def console(results: dict[str, Any], output: str) -> str:
    """The one-screen summary printed at the end."""
    s = results["summary"]
    width = max([len(name) for name in s["attacks"]] + [6])
    lines = [f"{'complete' if results['complete'] else 'PARTIAL'}: {s['images']}/{s['total_images']} images, "
             f"clean accuracy {s['clean_accuracy']:.2%}, fooled {s['fooled']}, not fooled {s['not_fooled']}",
             f"score (L2 on [0, 1]): mean {_fmt(s['mean'])}  median {_fmt(s['median'])}   "
             f"budget: {results['budget']['description']}",
             f"{'attack':<{width}}  success  median    wins  queries/img  wall s"]
    for name, a in s["attacks"].items():
        lines.append(f"{name:<{width}}  {a['success_rate']:7.1%}  {_fmt(a['median']):>8}  {a['wins']:4d}  "
                     f"{a['queries_mean']:11.0f}  {a['wall_time_s']:6.1f}")
    if (ref := s["reference"]) is not None:
        lines.append(f"white-box reference median {_fmt(ref['median'])}; suite/reference median "
                     f"{_fmt(ref['suite_over_reference_median'], '.3f')}")
    if s["unverified"]:
        lines.append(f"warning: {len(s['unverified'])} adversarial(s) did not re-verify: {s['unverified'][:10]}")
    lines.append(f"report: {output}/report.md  {output}/results.json  {output}/cdf.png  {output}/gallery.png  "
                 f"{output}/adversarials.npz")
    return "\n".join(lines)
