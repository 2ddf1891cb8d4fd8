import pytest

from workbench.errors import UnknownHookError
from workbench.hooks import HOOK_KINDS, HookPoint, parse_hook, parse_hooks


def test_canonical_names_round_trip():
    for kind in HOOK_KINDS:
        assert parse_hook(f"blocks.3.{kind}", n_layers=30).name == f"blocks.3.{kind}"


@pytest.mark.parametrize(
    "legacy,canonical",
    [
        ("blocks.6.hook_resid_pre", "blocks.6.hook_in"),
        ("blocks.6.hook_attn_out", "blocks.6.attn.hook_out"),
        ("blocks.6.hook_mlp_out", "blocks.6.mlp.hook_out"),
        ("blocks.6.hook_resid_post", "blocks.6.hook_out"),
    ],
)
def test_legacy_aliases_map_to_canonical(legacy, canonical):
    assert parse_hook(legacy, n_layers=30).name == canonical


def test_unknown_hook_lists_valid_names():
    with pytest.raises(UnknownHookError) as err:
        parse_hook("blocks.6.hook_resid_middle", n_layers=30)
    message = str(err.value)
    assert "blocks.6.hook_resid_middle" in message
    for kind in HOOK_KINDS:
        assert f"blocks.{{i}}.{kind}" in message


def test_layer_out_of_range_names_the_range():
    with pytest.raises(UnknownHookError, match=r"2 layers \(0..1\)"):
        parse_hook("blocks.2.hook_out", n_layers=2)


def test_parse_hooks_sorts_in_forward_order_and_dedupes():
    points = parse_hooks("blocks.1.hook_out,blocks.0.mlp.hook_out,blocks.1.hook_resid_post,blocks.0.hook_in", 2)
    assert points == [HookPoint(0, "hook_in"), HookPoint(0, "mlp.hook_out"), HookPoint(1, "hook_out")]


def test_empty_hook_list_is_an_error():
    with pytest.raises(UnknownHookError, match="No hook points"):
        parse_hooks(" , ", 2)
