"""Each backend is declared once, in its adapter module; the registry's tables are derived from the declarations."""

from __future__ import annotations

import importlib
import pkgutil

import fluxlab
from fluxlab import registry
from fluxlab.backends import BUILTIN_BACKENDS, BUILTIN_GROUPS
from fluxlab.backends.base import Backend, Group
from fluxlab.platform import Platform


def test_every_adapter_module_in_the_folder_is_collected():
    package = importlib.import_module("fluxlab.backends")
    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base"}
    collected = []
    for name in sorted(modules):
        collected += importlib.import_module(f"fluxlab.backends.{name}").BACKENDS
    assert {"sdpa", "flash_attn", "aiter", "emulated", "reference"} <= modules
    assert sorted(b.name for b in collected) == sorted(b.name for b in BUILTIN_BACKENDS)
    assert all(isinstance(b, Backend) for b in BUILTIN_BACKENDS) and all(isinstance(g, Group) for g in BUILTIN_GROUPS)


def test_aliases_are_the_declared_names():
    for backend in [*BUILTIN_BACKENDS, *BUILTIN_GROUPS]:
        for alias in (*backend.aliases, *getattr(backend, "diffusers", ())):
            if alias != backend.name:
                assert registry.canonical_name(alias) == backend.name, alias
    assert registry.canonical_name("_native_cudnn") == "sdpa_cudnn"
    assert registry.canonical_name("flash_attn") == "fa"


def test_priority_rows_follow_the_ranks():
    assert registry.PRIORITY[("nvidia", "sm_90")] == ("fa4", "sdpa_cudnn", "fa3", "sdpa_flash", "fa2",
                                                      "sdpa_efficient", "sdpa")
    assert registry.PRIORITY[("amd", None)] == ("aiter", "sdpa_flash", "sdpa_efficient", "sdpa")
    assert registry.priority_for(Platform.cpu()) == ("sdpa", "sdpa_flash", "sdpa_math")
    for (vendor, arch), row in registry.PRIORITY.items():
        ranks = [registry.get_backend(name).rank(Platform(vendor, arch, "test", "2")) for name in row]
        assert ranks == sorted(ranks) and None not in ranks, (vendor, arch)
    never = {b.name for b in BUILTIN_BACKENDS if not b.priority}
    assert {"sage", "emu_sage", "reference"} <= never
    assert not never & {n for row in registry.PRIORITY.values() for n in row}


def test_groups_come_from_their_members():
    fa = registry.get_backend("fa")
    assert [b.name for b in fa.all_members()] == ["fa4", "fa3", "fa2"]
    assert registry.group_members("fa", Platform.h100()) == ("fa4", "fa3", "fa2")
    assert registry.group_members("fa", Platform.a100()) == ("fa2",)  # fa3/fa4 need Hopper or newer
    assert registry.group_members("fa", Platform.mi300x()) == ("fa2",)


def test_diffusers_map_and_flux2_set_are_derived():
    from fluxlab.models import interop
    from fluxlab.models.attach import FLUX2_BACKENDS

    assert interop.SAME_KERNEL == {n: b.name for b in BUILTIN_BACKENDS for n in b.diffusers}
    assert interop.SAME_KERNEL["flash"] == "fa2" and interop.SAME_KERNEL["native"] == "sdpa"
    assert FLUX2_BACKENDS == {b.name for b in BUILTIN_BACKENDS if b.flux2} | {g.name for g in BUILTIN_GROUPS}


def test_a_registered_backend_with_a_rank_takes_part_in_automatic_choice():
    import torch

    def kernel(q, k, v, *, scale, causal=False, return_lse=False):
        return fluxlab.attention(q, k, v, backend="sdpa", scale=scale, causal=causal)

    fluxlab.register_backend("ranked_first", kernel, priority={"cpu": 1}, aliases=("rf",))
    try:
        from fluxlab.models.attach import flux2_backends

        assert registry.priority_for(Platform.cpu())[0] == "ranked_first"
        q = torch.randn(1, 8, 2, 16)
        assert fluxlab.plan(q, q, q, platform=Platform.cpu()).backend == "ranked_first"
        assert registry.canonical_name("rf") == "ranked_first"
        assert "ranked_first" in flux2_backends()
    finally:
        fluxlab.registry.unregister_backend("ranked_first")
    assert "ranked_first" not in registry.priority_for(Platform.cpu())
    assert "rf" not in registry.ALIASES


def test_no_selection_function_takes_more_than_five_positional_parameters():
    """The call is described once (dispatch.Call); selection passes that, not loose positional arguments."""
    import ast
    from pathlib import Path

    package = Path(fluxlab.__file__).parent
    too_many = []
    for name in ("registry.py", "choice.py", "dispatch.py", "doctor.py", "backends/base.py"):
        for node in ast.walk(ast.parse((package / name).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(positional) > 5:
                    too_many.append(f"{name}:{node.lineno} {node.name}({', '.join(positional)})")
    assert too_many == []


def test_a_plan_keeps_each_backends_reasons_computed_once():
    import torch

    q = torch.randn(1, 8, 2, 16)
    made = fluxlab.plan(q, q, q, platform=Platform.cpu())
    assert made.call.q_shape == q.shape and made.call.platform == Platform.cpu()
    kept = made.reasons.by_backend
    assert "sdpa" in kept and kept["sdpa"] == []  # judged while selecting
    first = made.reasons_for_others()["fa4"]
    assert kept["fa4"] is made.reasons(registry.get_backend("fa4"))  # the same list, not computed again
    assert any("runs on nvidia" in r for r in first)
    assert made.reasons._tensors is None  # the cached plan holds no input tensor
