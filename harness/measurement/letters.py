"""Letter scoring of multiple-choice tasks (``--mc-scoring letters``), the same for open and closed models.

A chat API gives no prompt log-probabilities, so lm-eval's way of scoring a
multiple-choice task (the log-likelihood of each choice's text) cannot run on it. What
every chat API does give is the log-probabilities of the token it *generates*. So the
question is asked with lettered choices through the chat template, the model generates
one token, and the choice letters are read off that token's distribution:

- ``acc``: the choice whose letter carries the most probability, the token variants of a
  letter (``A``, `` A``, ``A.``, ``(A``) merged;
- ``letter_mass``: how much probability went to valid letters at all, so a model that
  would rather talk than answer is visible instead of looking merely wrong.

Both sides read the same thing: the ``TOP_LOGPROBS`` most likely tokens of the first
generated position (what OpenAI's chat API returns at most), a letter outside them
counting as probability 0. In process that list is cut from the full distribution of
the logits after the chat-rendered prompt; through an API it is the ``top_logprobs`` the
API returned. Where an API returns no log-probabilities, ``--allow-generated-letters``
takes the generated token as the answer (a distribution with all its mass on it): a
protocol of its own, labelled apart.

A task is changed only through its config (lm-eval reads doc_to_text, doc_to_choice,
doc_to_target and process_results from it on every call), so lm-eval still builds the
requests, the few-shot turns and the metrics. Choices that are not letters already
(TruthfulQA's answers) are listed as ``A. ...`` in an order fixed per document from its
text (a task that always puts the right answer first must not hand it letter A); a task
whose choices are the letters themselves (MMLU) keeps its own listing and order. Either
way the prompt's answer cue ("Answer:", TruthfulQA's "A:") becomes ``INSTRUCTION`` and
then "Answer:", in the question and in each few-shot turn.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Any, Callable

from harness.core.errors import ConfigError

LETTERS = "ABCDEFGHIJKLMNOPQRST"
TOP_LOGPROBS = 20  # OpenAI's maximum for top_logprobs
FIRST_TOKEN = "letters, first-token"
GENERATED = "letters, generated"
INSTRUCTION = "Answer with the letter of the correct choice."
# the answer cue a prompt written for log-likelihood scoring ends with ("\nA:", "Answer:")
_CUE = re.compile(r"\s*(?:\n|^)(?:A|Answer)\s*:\s*$")
_VARIANT = re.compile(r"^[\s(\[*]*([A-Z])[\s.):\]*]*$")


class LetterScoringError(ConfigError):
    pass


def letter_of(token: str) -> str | None:
    """The letter a generated token stands for ('A', ' A', 'A.', '(A)', ' A:'), else None."""
    m = _VARIANT.match(token)
    return m.group(1) if m and token.strip() else None


def letter_logprobs(top: list[tuple[str, float]], n_choices: int) -> list[tuple[float, bool]]:
    """Per choice letter: log of the probability summed over its token variants in ``top``
    (-inf where none is there), and whether the most likely token is one of them."""
    mass = [0.0] * n_choices
    for token, logprob in top:
        letter = letter_of(token)
        if letter is not None and letter in LETTERS[:n_choices] and logprob > -math.inf:
            mass[LETTERS.index(letter)] += math.exp(logprob)
    best = letter_of(max(top, key=lambda t: t[1])[0]) if top else None
    return [(math.log(m) if m > 0 else -math.inf, best == LETTERS[i]) for i, m in enumerate(mass)]


def mass_of(results: list[tuple[float, bool]]) -> float:
    return float(sum(math.exp(ll) for ll, _ in results if ll > -math.inf))


def order_for(doc_text: str, choices: list[str]) -> list[int]:
    """A fixed order of the choices for one document, the same on every machine and run."""
    seed = hashlib.sha256(("\x1f".join([doc_text, *choices])).encode()).hexdigest()
    order = list(range(len(choices)))
    random.Random(seed).shuffle(order)
    return order


def _is_lettered(choices: list[str]) -> bool:
    return [str(c).strip() for c in choices] == list(LETTERS[:len(choices)])


class _Field:
    """A config field lm-eval calls with the doc. Its repr is what the dumped config (and so
    the task config hash) shows, the same on every run; not a dataclass, which lm-eval's
    config dump would open up down to the function's address."""

    __slots__ = ("name", "fn", "original")

    def __init__(self, name: str, fn: Callable[..., Any], original: Any):
        self.name, self.fn, self.original = name, fn, original

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"letters.{self.name}({self.original!r})"


def letter_form(task) -> None:
    """Turn one lm-eval multiple-choice Task into its letter-scored form, in place."""
    from lm_eval.api.metrics import mean

    cfg = task.config
    results0 = cfg.process_results

    def former(text0, choice0, target0):
        def original(doc) -> tuple[str, list[str], int]:
            text = task.doc_to_text(doc, doc_to_text=text0)
            choices = [str(c) for c in task.doc_to_choice(doc, doc_to_choice=choice0)]
            gold = task.doc_to_target(doc, doc_to_target=target0)
            if isinstance(gold, str) and gold in choices:
                gold = choices.index(gold)
            if isinstance(gold, str) and gold.isdigit():
                gold = int(gold)
            if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
                raise LetterScoringError(f"task '{cfg.task}' has a target that is not one of its choices ({gold!r}); "
                                         "letter scoring needs a single right answer")
            return str(text), choices, gold

        def form(doc) -> tuple[str, list[str], list[int], int]:
            """(lettered prompt, letters, order, gold in letter order) for one document."""
            text, choices, gold = original(doc)
            lettered = _is_lettered(choices)
            order = list(range(len(choices))) if lettered else order_for(text, choices)
            body = _CUE.sub("", text.rstrip())
            if not lettered:
                body += "\n" + "\n".join(f"{LETTERS[i]}. {choices[j].strip()}" for i, j in enumerate(order))
            return f"{body}\n{INSTRUCTION}\nAnswer:", list(LETTERS[:len(choices)]), order, order.index(gold)

        return form

    form = former(cfg.doc_to_text, cfg.doc_to_choice, cfg.doc_to_target)
    text0, choice0, target0 = cfg.doc_to_text, cfg.doc_to_choice, cfg.doc_to_target

    def process(doc, results):
        prompt, letters, order, gold = form(doc)
        results = list(results)
        answered = mass_of(results) > 0  # else no valid letter among the most likely tokens
        metrics: dict[str, Any]
        if callable(results0):
            # a task's own metric (TruthfulQA MC2) expects its choices in their own order
            unshuffled: list[Any] = [None] * len(results)
            for i, j in enumerate(order):
                unshuffled[j] = results[i] if answered else (0.0, False)
            metrics = dict(results0(doc, unshuffled))
            if not answered:  # the names of the task's metrics, each 0: no answer was given
                metrics = {k: 0.0 for k in metrics}
        else:
            lls = [ll for ll, _ in results]
            pick = max(range(len(lls)), key=lambda i: lls[i])
            metrics = {"acc": 1.0 if answered and pick == gold else 0.0}
            if "acc_norm" in task._aggregation_list:
                metrics["acc_norm"] = metrics["acc"]  # every letter is one character long
        metrics["letter_mass"] = mass_of(results)
        return metrics

    cfg.doc_to_text = _Field("doc_to_text", lambda doc: form(doc)[0], text0)
    cfg.doc_to_choice = _Field("doc_to_choice", lambda doc: form(doc)[1], choice0)
    cfg.doc_to_target = _Field("doc_to_target", lambda doc: form(doc)[3], target0)
    cfg.process_results = _Field("process_results", process, results0)
    cfg.target_delimiter = " "
    # few-shot examples are formatted from the few-shot config (by default a copy of the
    # task's own fields, taken when the task was built): they become letters too
    shots = getattr(task, "fewshot_cfg", None)
    if shots is not None:
        f_text, f_choice, f_target = (shots.doc_to_text or text0, shots.doc_to_choice or choice0,
                                      shots.doc_to_target if shots.doc_to_target is not None else target0)
        shot_form = former(f_text, f_choice, f_target)
        shots.doc_to_text = _Field("doc_to_text", lambda doc: shot_form(doc)[0], f_text)
        shots.doc_to_choice = _Field("doc_to_choice", lambda doc: shot_form(doc)[1], f_choice)
        shots.doc_to_target = _Field("doc_to_target", lambda doc: shot_form(doc)[3], f_target)
        shots.target_delimiter = " "
    cfg.metadata = {**(cfg.metadata or {}), "mc_scoring": "letters", "letters_top_logprobs": TOP_LOGPROBS}
    task._aggregation_list["letter_mass"] = mean
    task._higher_is_better["letter_mass"] = True


def check_choices(task, name: str) -> None:
    """Refuse a task that is not multiple-choice, or one with more choices than letters."""
    if task.OUTPUT_TYPE != "multiple_choice":
        raise LetterScoringError(f"task '{name}' is not multiple-choice (its answers are scored as {task.OUTPUT_TYPE}); "
                                 "--mc-scoring letters applies to multiple_choice tasks only: leave it out, or run it "
                                 "separately")
    cfg = task.config
    for doc in task.eval_docs:
        n = len(task.doc_to_choice(doc, doc_to_choice=cfg.doc_to_choice))
        if n > len(LETTERS):
            raise LetterScoringError(f"task '{name}' has a question with {n} choices, more than the {len(LETTERS)} "
                                     f"letters A-{LETTERS[-1]}; it cannot be letter-scored (drop --mc-scoring letters "
                                     "for it)")


def apply(loaded, names: list[str]) -> set[str]:
    """Letter-score the multiple-choice leaves of the requested ``names``; returns those leaves.

    Every leaf is checked (before the model loads) before any is changed."""
    leaves = {leaf: task for leaf, task in loaded.leaves.items() if loaded.owner.get(leaf) in set(names)}
    for leaf, task in sorted(leaves.items()):
        check_choices(task, leaf)
    for task in leaves.values():
        letter_form(task)
    return set(leaves)


def protocol_for(leaf: str, seen: dict[str, str], allow_generated: bool) -> str:
    """How a letter-scored leaf was scored; one whose every answer came from the request
    cache says only what the cache can hold."""
    if leaf in seen:
        return seen[leaf]
    return f"{FIRST_TOKEN} or generated" if allow_generated else FIRST_TOKEN


def group_masses(rows: list, results: dict) -> list:
    """letter_mass for each group whose leaves were all letter-scored: their mean weighted by
    documents (lm-eval aggregates only the metrics a group's YAML lists)."""
    from harness.core.record import AccuracyResult

    subtasks = results.get("group_subtasks") or {}
    mass = {r.task: r for r in rows if r.metric == "letter_mass" and r.kind == "task" and r.n}
    have = {(r.task, r.metric) for r in rows}

    def leaves(name: str, seen: frozenset = frozenset()) -> list[str]:
        if name not in subtasks:
            return [name]
        return [leaf for c in subtasks[name] if c not in seen for leaf in leaves(c, seen | {name})]

    out = []
    for group in subtasks:
        parts = leaves(group)
        if not parts or (group, "letter_mass") in have or any(p not in mass for p in parts):
            continue
        n = sum(mass[p].n for p in parts)
        value = sum(mass[p].value * mass[p].n for p in parts) / n
        stderr = (sum((mass[p].stderr or 0.0) ** 2 * mass[p].n ** 2 for p in parts) ** 0.5 / n
                  if all(mass[p].stderr is not None for p in parts) else None)
        like = next((r for r in rows if r.task == group), None)
        out.append(AccuracyResult(task=group, alias=like.alias if like else None, kind="group",
                                  parent=like.parent if like else None, metric="letter_mass", filter="none",
                                  value=value, stderr=stderr, n=n, num_fewshot=like.num_fewshot if like else None,
                                  higher_is_better=True, task_config_hash=like.task_config_hash if like else None,
                                  scoring=like.scoring if like else None))
    return out
