"""The token URL is a setting per brand and generation; v3 works end to end."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tokenbench import Bench

from larkgate.config import load_settings

pytestmark = pytest.mark.anyio


def test_brand_and_generation_pick_the_hosts_and_token_url() -> None:
    feishu = load_settings()
    lark_v3 = load_settings(brand="lark", token_api="v3")
    pinned = load_settings(token_api="v3", token_url="https://proxy.example.com/token/")

    assert feishu.token_url == "https://open.feishu.cn/open-apis/authen/v2/oauth/token"
    assert feishu.authorize_url == "https://accounts.feishu.cn/open-apis/authen/v1/authorize"
    assert lark_v3.token_url == "https://accounts.larksuite.com/oauth/v3/token"
    assert lark_v3.open_base_url == "https://open.larksuite.com"
    assert pinned.token_url == "https://proxy.example.com/token"


async def test_login_and_refresh_through_the_v3_endpoint(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench(token_api="v3")
    assert bench.gateway.settings.token_url.endswith("/oauth/v3/token")
    alice = await bench.login("alice")
    bench.advance(7201)

    token = await bench.keeper.access_token(alice)

    token_calls = bench.emulator.state.calls.matching("/oauth/v3/token")
    assert [c.grant_type for c in token_calls] == ["authorization_code", "refresh_token"]
    assert all(c.status == 200 for c in token_calls)
    assert bench.emulator.state.calls.matching("/open-apis/authen/v2/oauth/token") == []
    assert token == bench.feishu_tokens(alice)["access_token"]
