#!/usr/bin/env python3
"""Builds data/prompts/prompts.txt, the prompt set of `lowbit eval --generate`.

One prompt per line: the first sentence of every k-th paragraph of WikiText-2 validation
(its tokenisation artefacts " , " "@-@" undone) and of Mansfield Park (the Austen novel
held out of calibration). Deterministic: rerunning gives the same file.
"""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent / "data"
PER_SOURCE = 150


def detok(s: str) -> str:
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r" ([,.;:!?)\]'])", r"\1", s)
    s = re.sub(r"([(\[]) ", r"\1", s)
    s = s.replace(" 's", "'s").replace('" ', '"', 1) if s.count('"') == 1 else s.replace(" 's", "'s")
    return re.sub(r"\s+", " ", s).strip()


ABBREV = {"mr", "mrs", "ms", "dr", "st", "no", "jr", "sr", "e.g", "i.e", "etc", "vs", "co", "ltd", "mt", "lt",
          "gen", "col", "capt", "sir", "rev", "gov", "sen", "inc", "u.s", "fig", "vol", "ed", "c"}


def first_sentence(p: str) -> str | None:
    s = None
    for m in re.finditer(r"[.!?](\s|$)", p):
        head = p[: m.start() + 1]
        last = re.split(r"[\s(]", head[:-1])[-1].lower()
        if head.endswith(".") and (last in ABBREV or re.fullmatch(r"[a-z]", last)):
            continue
        s = head.strip()
        break
    if s is None:
        return None
    words = s.split()
    if not 8 <= len(words) <= 40 or '"' in s or "“" in s or "”" in s:
        return None
    return s


def pick(paragraphs):
    sents = [s for s in (first_sentence(p) for p in paragraphs) if s]
    step = max(1, len(sents) // PER_SOURCE)
    return sents[::step][:PER_SOURCE]


wiki = (root / "wikitext-2/wiki.valid.raw").read_text(encoding="utf-8")
wiki_pars = [detok(l) for l in wiki.splitlines() if l.strip() and not l.strip().startswith("=")]
austen = (root / "austen/mansfield-park.txt").read_text(encoding="utf-8")
austen_pars = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", austen)]
austen_pars = [p for p in austen_pars if not p.isupper() and not p.startswith("CHAPTER")]
prompts = pick(wiki_pars) + pick(austen_pars)
assert len(prompts) == 2 * PER_SOURCE, len(prompts)
out = root / "prompts/prompts.txt"
out.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
print(f"{out}: {len(prompts)} prompts", file=sys.stderr)
