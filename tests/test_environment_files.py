"""environment-cuda.yml / environment-rocm.yml agree with pyproject.toml: same packages, compatible bounds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import yaml  # noqa: E402  (pyyaml is in the test extra)
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import InvalidVersion, Version  # noqa: E402

try:
    import tomllib
except ImportError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = {"cuda": ROOT / "environment-cuda.yml", "rocm": ROOT / "environment-rocm.yml"}
# README and the docs pages it links: installs live in docs/install.md, measured results in the other pages.
DOC_PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
INSTALL_DOC = ROOT / "docs" / "install.md"
# conda package names that provide a PyPI distribution under another name
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-gpu": "torch", "pytorch-cpu": "torch"}
# pyproject extras each environment must carry (beyond the core dependencies and the notebooks extra)
EXTRAS_PER_ENV = {"cuda": ("notebooks", "cuda"), "rocm": ("notebooks",)}


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def project_requirements(extras=()) -> dict[str, Requirement]:
    project = pyproject()
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    reqs = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in reqs:  # the same package in two lists: both bounds apply
            req = Requirement(f"{req.name}{reqs[name].specifier & req.specifier}")
        reqs[name] = req
    return reqs


def conda_spec(text: str) -> tuple[str, SpecifierSet]:
    """``python=3.12`` (conda: 3.12.*), ``pytorch-gpu>=2.5``, ``numpy>=1.24,<3`` -> (PyPI name, specifiers)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", text)
    assert match, f"cannot read conda dependency {text!r}"
    name, version = match.groups()
    parts = []
    for part in filter(None, (p.strip() for p in version.split(","))):
        if re.fullmatch(r"=[^=].*", part):
            part = "==" + part[1:].removesuffix("*").removesuffix(".") + ".*"
        elif re.fullmatch(r"[0-9].*", part):
            part = "==" + part
        parts.append(part)
    return canonicalize_name(CONDA_TO_PYPI.get(name, name)), SpecifierSet(",".join(parts))


def environment(kind: str) -> dict:
    """{"conda": {name: spec}, "pip": {name: Requirement}, "pip_options": [...], "editable": [...], "text": ...}"""
    text = ENV_FILES[kind].read_text()
    data = yaml.safe_load(text)
    env = {"name": data.get("name"), "channels": data.get("channels", []), "conda": {}, "pip": {},
           "pip_options": [], "editable": [], "text": text}
    for item in data["dependencies"]:
        if isinstance(item, dict):
            for line in item.get("pip", []):
                if line.startswith("-e ") or line.startswith("--editable"):
                    env["editable"].append(line.split(None, 1)[1])
                elif line.startswith("-"):
                    env["pip_options"].append(line)
                else:
                    req = Requirement(line)
                    env["pip"][canonicalize_name(req.name)] = req.specifier
        else:
            name, spec = conda_spec(item)
            assert name not in env["conda"], f"{kind}: {name} listed twice in conda dependencies"
            env["conda"][name] = spec
    twice = set(env["conda"]) & set(env["pip"])
    assert not twice, f"{ENV_FILES[kind].name}: {sorted(twice)} come from both conda and pip; keep one source"
    return env


def candidate_versions(*specs: SpecifierSet) -> list[Version]:
    """Versions at and around every bound of ``specs``: enough to tell whether one range lies inside another."""
    out = {Version("0"), Version("9999")}
    for spec in specs:
        for s in spec:
            try:
                v = Version(s.version.replace(".*", ""))
            except InvalidVersion:
                continue
            release = list(v.release) + [0] * (3 - len(v.release))
            out.add(v)
            out.add(Version(v.public))
            for i in range(3):
                up = release[:i] + [release[i] + 1] + [0] * (2 - i)
                out.add(Version(".".join(map(str, up))))
                if release[i] > 0:
                    down = release[:i] + [release[i] - 1] + [99] * (2 - i)
                    out.add(Version(".".join(map(str, down))))
            if not v.is_prerelease and not v.is_devrelease:
                for pre in ("a0", "b1", "rc1", ".dev0"):
                    out.add(Version(f"{v.public}{pre}"))
    return sorted(out)


def within(env_spec: SpecifierSet, project_spec: SpecifierSet) -> tuple[bool, str]:
    """True when every version the environment admits is one the project admits, and it admits some."""
    candidates = candidate_versions(env_spec, project_spec)
    admitted = [v for v in candidates if env_spec.contains(v, prereleases=True)]
    if not admitted:
        return False, f"'{env_spec}' admits no version at all"
    outside = [v for v in admitted if not project_spec.contains(v, prereleases=True)]
    if outside:
        return False, f"'{env_spec}' admits {outside[0]}, outside pyproject's '{project_spec}'"
    return True, ""


@pytest.mark.parametrize("kind", sorted(ENV_FILES))
def test_environment_carries_every_dependency_with_compatible_bounds(kind):
    env = environment(kind)
    packages = env["conda"] | env["pip"]
    required = project_requirements(EXTRAS_PER_ENV[kind])
    problems = []
    for name, req in required.items():
        if name not in packages:
            problems.append(f"{name} (pyproject: '{req}') is missing")
            continue
        ok, why = within(packages[name], req.specifier)
        if not ok:
            problems.append(f"{name}: {why}")
    # Anything else the file pins that pyproject also names (test/compare extras) must agree too.
    everything = project_requirements(pyproject()["optional-dependencies"])
    for name, spec in packages.items():
        if name in everything and name not in required:
            ok, why = within(spec, everything[name].specifier)
            if not ok:
                problems.append(f"{name}: {why}")
    assert not problems, f"{ENV_FILES[kind].name} disagrees with pyproject.toml:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("kind", sorted(ENV_FILES))
def test_environment_python_and_fluxlab_itself(kind):
    env = environment(kind)
    assert env["editable"] == ["."], f"{ENV_FILES[kind].name} must install fluxlab itself with '-e .' in its pip list"
    assert "python" in env["conda"], "pin python in the conda dependencies"
    ok, why = within(env["conda"]["python"], SpecifierSet(pyproject()["requires-python"]))
    assert ok, f"python: {why}"
    assert "pip" in env["conda"], "conda needs pip in the dependencies to run the pip section"


def test_cuda_environment_takes_a_cuda_pytorch():
    env = environment("cuda")
    assert "torch" in env["conda"], "CUDA PyTorch should come from conda (conda-forge's pytorch-gpu)"
    assert re.search(r"^\s*-\s*pytorch-gpu", env["text"], re.M), "use conda-forge's CUDA build: pytorch-gpu"
    assert "flash-attn-4" in env["pip"]


def test_rocm_environment_takes_a_rocm_pytorch_and_documents_aiter():
    env = environment("rocm")
    torch_spec = env["pip"].get("torch")
    assert torch_spec is not None, "ROCm PyTorch comes from PyTorch's ROCm wheel index via pip"
    pins = [s for s in torch_spec if s.operator == "=="]
    assert pins, "pin torch with its +rocmX.Y local version so pip cannot take PyPI's CUDA wheel"
    local = Version(pins[0].version).local
    assert local and local.startswith("rocm"), f"torch pin {pins[0]} is not a ROCm build"
    index = [o for o in env["pip_options"] if o.startswith("--index-url")]
    assert index and index[0].rstrip("/").endswith("/whl/" + local), \
        f"--index-url must be PyTorch's {local} index (got {index})"
    assert "amd-aiter" not in env["pip"], \
        "the file builds aiter from source (the build with the Sage kernel); PyPI's amd-aiter would shadow it"
    text = env["text"]
    assert "github.com/ROCm/aiter" in text and "setup.py develop" in text, \
        "document the aiter build step (clone ROCm's aiter repository, python3 setup.py develop)"
    assert "AITER_USE_SYSTEM_TRITON=1" in text, "aiter's setup replaces triton unless AITER_USE_SYSTEM_TRITON=1"


def rocm_pin() -> tuple[str, str]:
    """(torch version, ROCm release) of environment-rocm.yml's torch pin: ``==2.11.0+rocm7.1`` -> ("2.11.0", "7.1")."""
    pins = [s for s in environment("rocm")["pip"]["torch"] if s.operator == "=="]
    version = Version(pins[0].version)
    return version.public, version.local.removeprefix("rocm")


def test_one_rocm_version_story_across_env_file_profile_and_readme():
    """environment-rocm.yml, Platform.mi300x() (doctor --profile mi300x) and README name one torch and one ROCm."""
    from fluxlab.platform import Platform

    torch_version, rocm = rocm_pin()
    profile = Platform.mi300x()
    assert (profile.torch_version, profile.hip_version) == (torch_version, rocm), \
        f"Platform.mi300x() says torch {profile.torch_version} / HIP {profile.hip_version}; " \
        f"environment-rocm.yml installs torch {torch_version}+rocm{rocm}"
    for path in (ENV_FILES["rocm"], *DOC_PAGES, ROOT / "pyproject.toml"):
        text = path.read_text()
        named = set(re.findall(r"ROCm (\d+\.\d+)", text)) | set(re.findall(r"rocm(\d+\.\d+)", text))
        assert named <= {rocm}, f"{path.name} names ROCm {sorted(named - {rocm})}; the story is ROCm {rocm}"
        torches = set(re.findall(r"torch==(\d+\.\d+\.\d+)\+rocm", text))
        assert torches <= {torch_version}, f"{path.name} pins torch {sorted(torches)} for ROCm; the story is " \
                                           f"{torch_version}"
    install = INSTALL_DOC.read_text()
    assert f"torch=={torch_version}+rocm{rocm}" in install, "docs/install.md's AMD section must name the ROCm torch pin"


def test_cuda_environment_header_matches_its_lines():
    """A line the header tells the reader to edit (cuda-version) is there to edit."""
    text = environment("cuda")["text"]
    if "cuda-version" in text:
        assert re.search(r"^\s*#?\s*-\s*cuda-version[=<>]", text, re.M), "the header names a cuda-version line"


def test_readme_install_commands_match_the_extras():
    """flash-attn builds against the installed torch; the aiter wheel is not called pure Python (it ships kernels)."""
    install = INSTALL_DOC.read_text()
    assert "--no-build-isolation" in install and "[flash2]" in install
    for path in (*DOC_PAGES, ENV_FILES["rocm"], ROOT / "pyproject.toml"):
        prose = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text()).lower()
        wrong = [s for s in re.split(r"(?<=[.;:])\s", prose)
                 if "aiter" in s and "pure python" in s and "not pure python" not in s]
        assert not wrong, f"{path.name}: amd-aiter ships compiled kernels, it is not pure Python: {wrong[0]!r}"


# -- honest pins: bounds at what was tested, GPU kernels at the releases the adapters are written for -------------

TESTED = ("torch", "diffusers", "transformers", "safetensors")


def recorded_versions() -> dict[str, set[Version]]:
    """package -> every version a committed result file (benchmarks/results) or the CPU constraints records."""
    import json

    found: dict[str, set[Version]] = {name: set() for name in TESTED}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in found and isinstance(value, str):
                    try:
                        found[key].add(Version(value))
                    except InvalidVersion:
                        pass
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in (ROOT / "benchmarks" / "results").rglob("*.json"):
        walk(json.loads(path.read_text()))
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            if req.name in found:
                found[req.name].update(Version(s.version) for s in req.specifier if s.operator == "==")
    return found


def lower_bound(spec: SpecifierSet) -> Version:
    bounds = [Version(s.version) for s in spec if s.operator in (">=", "==")]
    assert bounds, f"'{spec}' has no lower bound"
    return max(bounds)


def test_lower_bounds_are_the_oldest_tested_releases():
    """Each bound admits every recorded version and is not older than the oldest one's major.minor."""
    required = project_requirements()
    for name, versions in recorded_versions().items():
        assert versions, f"no committed result records a {name} version"
        spec = required[name].specifier
        admitted_not = [str(v) for v in versions if not spec.contains(Version(v.public), prereleases=True)]
        assert not admitted_not, f"pyproject's {name}'{spec}' refuses tested versions {admitted_not}"
        oldest = min(versions)
        floor = Version(".".join(map(str, oldest.release[:2])))
        assert lower_bound(spec) >= floor, \
            f"pyproject's {name}'{spec}' admits releases older than the oldest tested ({oldest})"


def test_gpu_kernel_libraries_are_pinned_to_the_adapters_releases():
    from fluxlab.backends.flash_attn import FA4
    from fluxlab.backends.sage import SAGE

    cuda = {canonicalize_name(Requirement(r).name): Requirement(r).specifier
            for r in pyproject()["optional-dependencies"]["cuda"]}
    env = environment("cuda")["pip"]
    for requirement in (FA4, SAGE):
        name = canonicalize_name(requirement.distribution)
        assert requirement.exact_version, f"{name}'s adapter names no release"
        expected = SpecifierSet(f"=={requirement.exact_version}")
        assert cuda[name] == expected, f"pyproject's cuda extra: {name}{cuda[name]}, adapter: {expected}"
        assert env[name] == expected, f"environment-cuda.yml: {name}{env[name]}, adapter: {expected}"
        assert f"{requirement.distribution}=={requirement.exact_version}" in requirement.install


def test_the_cuda_environment_pins_the_cuda_the_results_ran_on():
    readme_cuda = {code for page in DOC_PAGES for code in re.findall(r"torch 2\.\d+\.\d+\+cu(\d+)", page.read_text())}
    assert readme_cuda, "README and docs/ record no torch+cuXY build"
    spec = environment("cuda")["conda"].get("cuda-version")
    assert spec is not None, "environment-cuda.yml leaves CUDA unpinned (cuda-version)"
    for code in readme_cuda:
        version = Version(f"{code[:-1]}.{code[-1]}")
        assert spec.contains(version), f"cuda-version '{spec}' excludes CUDA {version}, which the results ran on"


def _stand_in_distribution(root: Path, module: str, distribution: str, version: str) -> None:
    """A stand-in package (an empty module) with real package metadata at ``version``: what importlib.metadata
    reads for an installed release; its kernels never run."""
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        package = root.joinpath(*parts[:depth])
        package.mkdir(exist_ok=True)
        (package / "__init__.py").touch()
    info = root / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")


@pytest.mark.parametrize("other", ["1.0.5", "2.1.1"])
def test_another_sageattention_release_is_refused_naming_both_versions(tmp_path, monkeypatch, other):
    import importlib
    import sys

    import fluxlab
    from fluxlab.platform import Platform
    from fluxlab.backends.sage import SAGE

    _stand_in_distribution(tmp_path, "sageattention", "sageattention", other)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sageattention", raising=False)
    importlib.invalidate_caches()
    fluxlab.clear_caches()
    try:
        assert SAGE.version() == other
        reason = SAGE.missing_reason()
        assert reason == (f"'sageattention' {other} is installed, but fluxlab's adapter is written for 1.0.6 exactly "
                          "(its call contract and numerics): pip install 'sageattention==1.0.6'")
        rows = {row.name: row for row in fluxlab.backends(Platform.h100())}
        assert not rows["sage"].available and reason in rows["sage"].reasons  # what fluxlab doctor prints
    finally:
        fluxlab.clear_caches()


def test_the_release_the_adapter_is_written_for_passes_the_check(tmp_path, monkeypatch):
    import importlib
    import sys

    from fluxlab.backends.flash_attn import FA4

    _stand_in_distribution(tmp_path, "flash_attn.cute", "flash-attn-4", "4.0.0b36")
    for name in [m for m in sys.modules if m.split(".")[0] == "flash_attn"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        assert FA4.version() == "4.0.0b36" and FA4.missing_reason() is None
    finally:  # finding flash_attn.cute imported the stand-in's flash_attn: no later test may see it
        for name in [m for m in sys.modules if m.split(".")[0] == "flash_attn"]:
            sys.modules.pop(name)
        importlib.invalidate_caches()
