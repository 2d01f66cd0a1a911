"""The ``sim`` backend: scans the synthetic internet (:mod:`scanflow.world`) in virtual time.

Nothing leaves the machine. A command is scanned at its due time (``not_before``, else
``issued_at``): probe ``i`` of the command happens at ``due + i / rate`` (the rate being the agent's
cap, or the politeness cap times the number of addresses if lower), and the ScanDone ends one connect
timeout after the last probe. The world answers at those times, so the agent runs as fast as the
world can be queried, not as fast as packets could be sent.

The world's addresses are ``10.0.0.0 + 0 .. sim_n_ips-1`` (the allowlist must include them); its
clock is seconds since ``agent.sim_epoch_us`` (0: midnight UTC of the day the agent started, so a
live scheduler's commands fall inside the world's horizon) times ``agent.sim_time_scale`` (1: the
world lives in real time; ``scanflow run`` sets one virtual day per ``day_seconds``), wrapping around
at the horizon.

Traffic is counted with the policy core's byte model at the IP layer (:class:`ByteModel`): a
40-byte SYN per probe, an RST for an open port without a banner, and the banner exchange.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from probe_agent.backends import Backend, Job, ProbeResult, ProbeStatus
from probe_agent.banners import Ask, ask_for, identify
from probe_agent.settings import AgentSettings
from scanflow.metrics import ByteModel

US = 1_000_000
DAY_US = 86_400 * US


@functools.lru_cache(maxsize=4)
def _world(n_ips: int, seed: int, horizon_days: float, loss: float):
    from scanflow.world import World, WorldConfig

    config = WorldConfig(n_ips=n_ips) if loss < 0 else WorldConfig(n_ips=n_ips, loss=loss)
    return World.generate(config, seed=seed, horizon_days=horizon_days)


class SimBackend(Backend):
    """Probes :class:`scanflow.world.World` (generated from ``sim_*`` settings, cached per process)."""

    name = "sim"
    virtual_time = True
    ipv6 = False

    def __init__(self, settings: AgentSettings):
        super().__init__(settings)
        self.world = None
        self.bytes_model = ByteModel.ip_layer()
        epoch = settings.sim_epoch_us or (time.time_ns() // 1000) // DAY_US * DAY_US
        self.epoch_us = epoch
        self.base = 0

    async def open(self) -> None:
        from scanflow.world.model import BASE_ADDRESS

        s = self.settings
        self.world = _world(s.sim_n_ips, s.sim_seed, s.sim_horizon_days, s.sim_loss)
        self.base = BASE_ADDRESS

    def world_time(self, t_us: int) -> int:
        """World seconds of agent time ``t_us`` (times ``sim_time_scale``, wrapping at the horizon)."""
        return int((t_us - self.epoch_us) * self.settings.sim_time_scale // US) % self.world.horizon

    def _result(self, ip: str, port: int, banner: bytes | None, target: int, t_us: int) -> ProbeResult:
        """What the grabber would have seen and sent on an open port."""
        model = self.bytes_model
        result = ProbeResult(ip, port, ProbeStatus.OPEN, target=target, timestamp_us=t_us)
        if not banner:
            result.kind = "SYN_ACK"
            result.packets, result.bytes = 2, model.syn + model.rst   # SYN, RST
            return result
        cap = self.settings.banner_cap
        result.kind, result.banner, result.banner_truncated = "BANNER", banner[:cap], len(banner) > cap
        ask = ask_for(port, self.settings.ask_unknown)
        result.protocol = identify(banner) or {Ask.HTTP: "http", Ask.RTSP: "rtsp"}.get(ask)
        segments = math.ceil(len(banner) / model.mss)
        # SYN, handshake ACK, the request if any, an ACK per two answer segments, FIN and last ACK.
        result.packets = 2 + (1 if model.request_bytes(port) else 0) + math.ceil(segments / 2) + 2
        result.bytes = model.syn + model.banner_exchange(port, len(banner))
        return result

    async def run(self, job: Job) -> None:
        if self.world is None:
            await self.open()
        world = self.world
        per_probe_us = US / job.rate_pps
        seq = 0
        t_us = job.start_us
        for block, absolute in job.blocks():
            if job.stopping:
                break
            n = len(block)
            times = job.start_us + ((seq + np.arange(n)) * per_probe_us).astype(np.int64)
            seq += n
            t_us = int(times[-1])
            index = absolute.astype(np.int64) - self.base
            inside = (index >= 0) & (index < world.n_ips)
            answers: dict[tuple[int, int], bytes | None] = {}
            if inside.any():
                for r in world.probe(np.unique(index[inside]), np.unique(block.port[inside]).tolist(),
                                     self.world_time(int(times[0]))):
                    answers[(r.ip, r.port)] = r.banner
            answered = np.zeros(n, dtype=bool)
            for row in range(n):
                key = (int(index[row]), int(block.port[row]))
                if key in answers:
                    answered[row] = True
                    job.report(self._result(_ip(int(absolute[row])), key[1], answers[key],
                                            int(block.target[row]), int(times[row])))
            # Closed and silent probes: one SYN each, accounted per target in bulk.
            silent = np.bincount(block.target[~answered], minlength=int(block.target.max()) + 1)
            for target in np.nonzero(silent)[0].tolist():
                job.account(target, int(silent[target]), int(silent[target]) * self.bytes_model.syn)
        job.end_us = t_us + int(self.settings.connect_timeout_s * US)


def _ip(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
