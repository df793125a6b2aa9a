"""What a contributor would have to add so that the groups of a model that are not prunable become so.

``needs(analysis)`` turns the reasons of non-prunable depth-2 groups into a short worklist:

* ``rule``: an ATen op with no rule (``fxprune/analysis/rules/``) blocks the groups' channels (also
  the channels it hides from classification: an FFN whose activation goes through an unknown op is
  reported as ``other``);
* ``rule-limit``: a rule exists but refuses this use (an unequal split, a grouped convolution...);
* ``adapter``: the analysis found the group but surgery could not re-derive a width (a constant
  size, an attribute it cannot tell apart): a family adapter (``fxprune/models/``) must set it;
* ``capability``: fxprune itself does not support the construct yet (fused value projections...).
"""
from __future__ import annotations

import re
from collections import defaultdict

from ..kinds import DEPTH2_KINDS, Kind

_NO_RULE = re.compile(r"no rule for (\S+) @ (\S+)")
_CONSTANT = re.compile(r"size (\S+) at (\S+) @ (\S+) \((.+?)\) is a constant")
_BY_OP = re.compile(r"^(.*?) by (\S+) @ (\S+)$")
_DRY_RUN = re.compile(r"fails when (\S+) loses a unit: (\w+) at (\S+?):?\s")


# reason types (``reason_type``): what kind of thing stops a group
REASON_TYPES = ("rule", "rule-limit", "fixed", "adapter", "capability", "kind")
_PIECE = re.compile(r"^(unaligned piece|pieces selected by|conflicting factorisation|normalised|reduced|convolved|"
                    r"scanned|triangular mask|repeated|flattened)")
_MODULE = re.compile(r"(@ \S+|[A-Za-z_]\w*(\.\w+)+)")


def reason_type(reason: str) -> str:
    """The type of a not-prunable reason, one of ``REASON_TYPES`` ('' for an unrecognised text):
    ``rule`` (an ATen op without a rule), ``rule-limit`` (a rule refuses this use), ``fixed`` (a
    buffer, input, output or constant fixes the width), ``adapter`` (surgery cannot re-derive a
    module attribute, or its dry run fails), ``capability`` (fxprune does not support the construct
    yet), ``kind`` (a kind that is reported, not pruned, or not asked for)."""
    r = reason.strip()
    if _NO_RULE.search(r):
        return "rule"
    if r.startswith("fixed"):
        return "fixed"
    if r.startswith(("cannot resize", "surgery dry run")):
        return "adapter"
    if r.startswith(("value channels", "fxprune could not trace")) or "couples to itself" in r:
        return "capability"
    if "groups are reported" in r or "not a depth-2 group" in r or "were not asked for" in r:
        return "kind"
    if _PIECE.match(r) or _BY_OP.match(r):
        return "rule-limit"
    return ""


def names_module(reason: str) -> bool:
    """Whether ``reason`` names where it happens (``op @ module`` or a dotted module/parameter path)."""
    return any(not m.group(0).endswith(".py") and not m.group(0).startswith(("aten.", "@ <root>"))
               for m in _MODULE.finditer(reason))


def needs(analysis) -> list[dict]:
    """``[{"need", "what", "where", "groups"}]``, most-blocking first."""
    found = defaultdict(lambda: {"where": set(), "groups": set()})
    for g in analysis.groups:
        if g.prunable or g.kind not in DEPTH2_KINDS | {Kind.OTHER}:
            continue
        for b in g.blocked_by:
            m = _NO_RULE.search(b)
            if g.kind == Kind.OTHER and not m:
                continue
            if m:
                key = ("rule", f"a rule for {m.group(1)} (fxprune/analysis/rules/)")
                found[key]["where"].add(m.group(2))
            else:
                m2 = _BY_OP.match(b)
                if m2 and not m2.group(1).startswith("fixed"):
                    key = ("rule-limit", f"{m2.group(2)}: its rule refuses this use ({m2.group(1)})")
                    found[key]["where"].add(m2.group(3))
                else:
                    continue
            found[key]["groups"].add(g.id)
        if g.not_offered and g.kind != Kind.OTHER:
            text = g.not_offered
            if text.startswith("cannot resize: "):
                for part in text[len("cannot resize: "):].split("; "):
                    m3 = _CONSTANT.match(part)  # one entry per source line, listing the modules
                    if m3:
                        key = ("adapter", f"an adapter (fxprune/models/) that replaces the width {m3.group(1)} "
                                          f"hard-coded at {m3.group(2)} ({m3.group(4)}), or the model reading it "
                                          "from an attribute")
                        found[key]["where"].add(m3.group(3))
                    else:
                        key = ("adapter", "an adapter (fxprune/models/, sync_module) that sets " + _subject(part))
                        found[key]["where"].add(part)
                    found[key]["groups"].add(g.id)
            elif text.startswith("surgery dry run"):
                m4 = _DRY_RUN.search(text)
                at = m4.group(3) if m4 else "?"
                key = ("adapter", f"an adapter (fxprune/models/, sync_module) for what {at} derives from the old "
                                  f"width: the pruned model's forward fails there ({m4.group(2) if m4 else 'error'})")
                found[key]["where"].add(m4.group(1) if m4 else g.module)
                found[key]["groups"].add(g.id)
            elif text.startswith("value channels") or text.startswith("fxprune could not trace"):
                key = ("capability", text)
                found[key]["groups"].add(g.id)
    out = [{"need": k[0], "what": k[1], "where": sorted(v["where"])[:5], "groups": sorted(v["groups"])}
           for k, v in found.items()]
    out.sort(key=lambda d: (-len(d["groups"]), d["need"], d["what"]))
    return out


def _subject(problem: str) -> str:
    """'size 4 at view @ blocks.0 (x.py:3) is a constant...' -> 'the size 4 of view @ blocks.0 (x.py:3)'."""
    m = re.match(r"size (\S+) at (.+?) is a constant", problem)
    if m:
        return f"the width {m.group(1)} hard-coded at {m.group(2)}"
    m = re.match(r"cannot tell which of (.+?) carries size", problem)
    if m:
        return f"one of {m.group(1)} (fxprune cannot tell which carries the width)"
    m = re.match(r"(.+?) must give", problem)
    if m:
        return f"{m.group(1)} (one attribute, two widths)"
    return problem
