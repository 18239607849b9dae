"""The policy service's adapter: decode, decide, publish. It keeps the policy set and the agent
registry in memory and reloads both when their files change, announcing each load on `control`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from charter import agents as agent_files
from charter import tools, topics
from charter.agents import Agent
from charter.bus import Bus
from charter.clock import Clock, SystemClock, new_id
from charter.config import Settings
from charter.consumer import Delivery
from charter.events import ActionProposed, Event, PolicyReloaded
from charter.pipeline import Pipeline
from charter.service import Parts
from charter.topics import Topic
from charter.watch import DirectoryWatcher
from services.policy.decide import decide
from services.policy.engine import PolicySet

log = logging.getLogger(__name__)
NAME = "policy"


class Policy:
    def __init__(self, settings: Settings, bus: Bus, clock: Clock) -> None:
        self._settings = settings
        self._bus = bus
        self._clock = clock
        self.tools = tools.load(settings.tool_module_list())
        self.agents: Mapping[str, Agent] = agent_files.load(settings.agents_dir, self.tools)
        self.policies = PolicySet.load(settings.policies_dir)
        self._policy_files = DirectoryWatcher(settings.policies_dir, ("*.cedar",))
        self._agent_files = DirectoryWatcher(settings.agents_dir, ("*.yaml", "*.yml"))

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        if not isinstance(event, ActionProposed):
            return []
        return decide(event, self.policies, self.agents, self.tools, self._clock.now())

    async def announce(self) -> None:
        p = self.policies
        if p.error:
            log.error("policy set %s is invalid, every action will be denied: %s", p.hash[:12], p.error)
        else:
            log.info(
                "policy set %s loaded: %d policies from %s", p.hash[:12], len(p.infos), ", ".join(p.files)
            )
        await self._bus.publish(
            PolicyReloaded.create(
                event_id=new_id(),
                now=self._clock.now(),
                tenant=self._settings.tenant,
                correlation_id=p.hash,
                policy_hash=p.hash,
                policy_ids=sorted(p.infos),
                files=list(p.files),
                valid=p.error is None,
                error=p.error,
            )
        )

    async def watch(self, stop: asyncio.Event) -> None:
        await self.announce()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if self._agent_files.changed():
                try:
                    self.agents = agent_files.load(self._settings.agents_dir, self.tools)
                    log.info("agents reloaded: %s", ", ".join(sorted(self.agents)))
                except Exception as exc:
                    # Fail closed: with no agents known, every action is denied as unknown.
                    self.agents = {}
                    log.error("agents invalid, denying every action until fixed: %s", exc)
            if self._policy_files.changed():
                self.policies = PolicySet.load(self._settings.policies_dir)
                await self.announce()


async def build(settings: Settings, bus: Bus) -> Parts:
    clock = SystemClock()
    policy = Policy(settings, bus, clock)
    pipeline = Pipeline(NAME, bus, policy.handle, clock)
    return Parts(
        topics=[topics.name(settings, Topic.ACTIONS_PROPOSED)],
        handle_batch=pipeline.process_batch,
        background=[policy.watch],
    )
