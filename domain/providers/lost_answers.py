"""What a lost submit answer costs with each provider, and when the worker refuses to run.

Neither provider takes an idempotency key, so a submit whose answer is lost is found by
its webhook (both providers, when PROVIDER_WEBHOOKS_ENABLED) or by the provider's listing
(Replicate only). fal has no listing: without webhooks such a submit is never found, the
row turns AMBIGUOUS, and the track falls back to the next provider while the fal job may
run and be billed — one extra paid job per lost answer. That is refused unless the
operator opts in (FAL_WITHOUT_WEBHOOKS=true).
"""

from __future__ import annotations

from core.settings import Settings

FAL = "fal"
REPLICATE = "replicate"


def _fal_in_use(settings: Settings) -> bool:
    return FAL in settings.provider_chain and settings.fal_key is not None


def fal_without_webhooks_problem(settings: Settings) -> str | None:
    """Why the worker must not start, or None."""
    if (
        not _fal_in_use(settings)
        or settings.provider_webhooks_enabled
        or settings.fal_without_webhooks
    ):
        return None
    return (
        "fal is in the provider chain and PROVIDER_WEBHOOKS_ENABLED is off: a fal submit "
        "whose answer is lost can never be found (fal has no listing), so the fallback may "
        "pay a second provider while the fal job is billed too. Turn provider webhooks on "
        "(with PUBLIC_BASE_URL reachable by fal), or set FAL_WITHOUT_WEBHOOKS=true to "
        "accept that cost"
    )


def lost_answer_costs(settings: Settings) -> dict[str, str]:
    """Per provider in the chain: what happens to a submit whose answer is lost."""
    costs: dict[str, str] = {}
    for name in settings.provider_chain:
        if name not in (FAL, REPLICATE):
            continue
        if settings.provider_webhooks_enabled:
            costs[name] = "found by its webhook: one paid job"
        elif name == REPLICATE:
            costs[name] = "found in the listing within the resolve window: one paid job"
        else:
            costs[name] = (
                "never found (no webhooks, no listing): the track falls back and the fal "
                "job may be billed too, at most one extra paid job per lost answer"
            )
    return costs
