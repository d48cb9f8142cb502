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
    for path in (ENV_FILES["rocm"], ROOT / "README.md", ROOT / "pyproject.toml"):
        text = path.read_text()
        named = set(re.findall(r"ROCm (\d+\.\d+)", text)) | set(re.findall(r"rocm(\d+\.\d+)", text))
        assert named <= {rocm}, f"{path.name} names ROCm {sorted(named - {rocm})}; the story is ROCm {rocm}"
        torches = set(re.findall(r"torch==(\d+\.\d+\.\d+)\+rocm", text))
        assert torches <= {torch_version}, f"{path.name} pins torch {sorted(torches)} for ROCm; the story is " \
                                           f"{torch_version}"
    readme = (ROOT / "README.md").read_text()
    assert f"torch=={torch_version}+rocm{rocm}" in readme, "README's AMD section must name the ROCm torch pin"


def test_cuda_environment_header_matches_its_lines():
    """A line the header tells the reader to edit (cuda-version) is there to edit."""
    text = environment("cuda")["text"]
    if "cuda-version" in text:
        assert re.search(r"^\s*#?\s*-\s*cuda-version[=<>]", text, re.M), "the header names a cuda-version line"


def test_readme_install_commands_match_the_extras():
    """flash-attn builds against the installed torch; the aiter wheel is not called pure Python (it ships kernels)."""
    readme = (ROOT / "README.md").read_text()
    assert "--no-build-isolation" in readme and "[flash2]" in readme
    for path in (ROOT / "README.md", ENV_FILES["rocm"], ROOT / "pyproject.toml"):
        prose = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text()).lower()
        wrong = [s for s in re.split(r"(?<=[.;:])\s", prose)
                 if "aiter" in s and "pure python" in s and "not pure python" not in s]
        assert not wrong, f"{path.name}: amd-aiter ships compiled kernels, it is not pure Python: {wrong[0]!r}"
