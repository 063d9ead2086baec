"""Builds the configured providers by name, once per worker."""

from __future__ import annotations

from activities.providers.base import MusicProvider
from activities.providers.synth import SynthProvider
from core.contracts import GenerationRequest, ProviderPlan
from core.settings import Settings


class UnknownProvider(KeyError):
    pass


class ProviderRegistry:
    def __init__(self, providers: dict[str, MusicProvider]) -> None:
        self._providers = providers

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        providers: dict[str, MusicProvider] = {"synth": SynthProvider(pace=settings.synth_pace)}
        # Imported here so a worker that only runs the synth never loads the paid clients.
        from activities.providers.fal import FalProvider
        from activities.providers.replicate import ReplicateProvider

        providers["fal"] = FalProvider.from_settings(settings)
        providers["replicate"] = ReplicateProvider.from_settings(settings)
        return cls(providers)

    def get(self, name: str) -> MusicProvider:
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(name) from None

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    def plan(self, chain: list[str], request: GenerationRequest) -> list[ProviderPlan]:
        """The chain for one request, each link with the reason it will be skipped, if any."""
        plans = []
        for name in chain:
            provider = self.get(name)
            if not provider.configured:
                plans.append(ProviderPlan(name=name, skip_reason="no API key configured"))
                continue
            plans.append(
                ProviderPlan(
                    name=name,
                    model=provider.model_for(request),
                    skip_reason=provider.cannot_serve(request),
                    remote=provider.remote,
                )
            )
        return plans

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
