"""The stage of a rehearsal: WeChat's API (in process), a private appliance in
front of it, and WeChat delivering to it; torn down whatever happens."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from chaos.appliance import APPID, TOKEN, Appliance, Secrets
from chaos.rehearsal import Rehearsal
from chaos.tally import LateSends
from chaos.wechat import WeChat
from simulator.api import FakeWeChatAPI

WECHAT_WINDOW = 5.0


@contextmanager
def stage(
    window: float = WECHAT_WINDOW,
    keep: bool = False,
    workdir: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> Iterator[Rehearsal]:
    """Start everything; stop the appliance on the way out, also on failure or Ctrl-C.

    The work folder (state, logs, the runs file) is removed afterwards unless `keep`;
    `extra` settings go to the appliance's env file."""
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="wxrelay-chaos-")) if workdir is None else workdir
    appliance: Appliance | None = None
    try:
        keys = Secrets.fresh()
        with FakeWeChatAPI(appid=APPID, secret=keys.appsecret) as api:
            appliance = Appliance(folder, api.base_url, window, keys, extra)
            late = LateSends(api)
            try:
                appliance.start()
                wechat = WeChat(appliance.url, TOKEN, APPID, appliance.aes_key, window)
                yield Rehearsal(appliance, api, wechat, late)
            finally:
                appliance.stop()
                late.stop()
    finally:
        if keep or not own:
            print(f"chaos: the appliance's state and logs are kept in {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
