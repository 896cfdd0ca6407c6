"""``site_calibration.md``: what ``python -m cxr.calibrate`` set at a site, in words and one table."""

from __future__ import annotations

from typing import Any, Dict, Optional

from cxr.labels import DISCLAIMER

__all__ = ["render_site_report"]


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1%}"


def _rule(entry: Optional[Dict[str, Any]]) -> str:
    if not entry:
        return "the most probable class (no operating point)"
    neg = entry.get("negative_class") or "Normal"
    return f"{neg} only when P({neg}) ≥ {float(entry['normal_threshold']):.3f}"


def render_site_report(record: Dict[str, Any]) -> str:
    """The page of a ``site_calibration.json`` record."""
    op, original = record.get("operating_point"), record.get("original_operating_point")
    rates = record.get("rates") or {}
    neg = (op or original or {}).get("negative_class") or "negative"
    critical = " + ".join((op or original or {}).get("critical_classes") or []) or "critical"
    lines = [
        "# Operating point set for a site",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- Model: `{record['model']}` (its weights unchanged); site films: `{record['site']}`, {record['films']} "
        f"films of {', '.join(record['classes_present'])}, {record['date']}.",
        f"- Temperature {record['temperature']:.3f}: {record['temperature_note']}.",
        f"- Rule before: {_rule(original)}; now: {_rule(op)}.",
        f"- {record['guarantee_sentence']}",
    ]
    if record.get("note"):
        lines.append(f"- {record['note']}.")
    lines += [
        "",
        f"| at the site ({record['films_for_threshold']} films) | count | share |",
        "|---|---|---|",
        f"| {critical} films called {neg} | {rates.get('critical_called_normal', '–')} of "
        f"{rates.get('critical', record['critical_films'])} | {_pct(rates.get('missed_rate') if rates else None)} |",
        f"| {neg} films kept {neg} | {rates.get('normal_kept', '–')} of {rates.get('normal', record['negative_films'])}"
        f" | {_pct(record.get('negative_kept_rate'))} |",
        "",
        "The guarantee holds for films like these: from this site and population, labelled the same way. It says "
        "nothing of another site; set the point again there.",
        "",
    ]
    return "\n".join(lines)
