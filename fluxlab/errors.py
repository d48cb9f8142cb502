"""Every error and warning fluxlab raises, in one small hierarchy that says what to catch (the table of what each
means: docs/guide.md, "Errors"); each message names the problem and the fix."""

from __future__ import annotations


class FluxlabError(Exception):
    """Base class for fluxlab's own errors."""


class InvalidInputError(FluxlabError, ValueError):
    """An input fluxlab cannot use: tensors, a backend spec, a setting, a size, a dtype or an argument."""


class UnknownBackendError(InvalidInputError, KeyError):
    """No backend of that name (the message suggests the closest)."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendRegistrationError(InvalidInputError, TypeError):
    """``register_backend`` was given a name, function or capability that cannot work."""


class MemoryBudgetError(InvalidInputError, MemoryError):
    """It cannot fit the memory it may use; ``plan`` holds the offload decision behind it where there is one."""

    def __init__(self, message: str, plan=None):
        super().__init__(message)
        self.plan = plan


class ParallelRefusedError(InvalidInputError):
    """A parallel run cannot start; ``reasons`` lists every reason, each a sentence naming the fix."""

    def __init__(self, reasons: list[str], what: str = "this parallel run"):
        self.reasons = list(reasons)
        super().__init__(f"fluxlab refuses {what}:\n  - " + "\n  - ".join(self.reasons))


class BackendUnavailableError(FluxlabError, RuntimeError):
    """The requested backend cannot run these inputs here; ``reasons`` says why."""

    def __init__(self, message: str, reasons: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.reasons = reasons or {}


class BackendNotAllowedError(BackendUnavailableError):
    """The backend is outside the set the model allows; fluxlab refuses rather than substitute."""


class NoBackendError(BackendUnavailableError):
    """Nothing qualifies; ``reasons`` maps every backend to why it was not picked."""


class NoDeviceError(BackendUnavailableError):
    """The work needs hardware this machine lacks (the command line exits with code 3)."""


class BackendOutputError(FluxlabError, RuntimeError):
    """A backend returned something that breaks the contract, or a comparison's reference is not exact here."""


class InvalidFileError(FluxlabError, ValueError, OSError):
    """A records folder, plan, output folder or result file that is damaged, foreign, or cannot be written."""


class FileMissingError(InvalidFileError, FileNotFoundError):
    """A records folder, plan file or model folder that is not there."""


class UsageError(FluxlabError, ValueError):
    """A call that cannot work in this state, or a command-line mistake (printed as one line, exit code 2)."""


class GenerationCancelled(FluxlabError, RuntimeError):
    """``StepControl.cancel()`` stopped a generation between denoising steps; its partial output is discarded."""


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``generate`` between denoising steps. ``results`` holds what finished (the interrupted
    backend's marked ``"interrupted": true`` with ``completed_steps``, or absent if it stopped mid-step)."""

    def __init__(self, message: str, results: list, backend: str, completed_steps: int, steps: int):
        super().__init__(message)
        self.results, self.backend, self.completed_steps, self.steps = results, backend, completed_steps, steps


class FluxlabWarning(UserWarning):
    """Base class for fluxlab's warnings (filter them all with ``warnings.filterwarnings(..., FluxlabWarning)``)."""


class FallbackWarning(FluxlabWarning):
    """The caller opted into fallback and a different backend than requested ran."""


class LayoutWarning(FluxlabWarning):
    """The inputs' head axis is longer than their sequence axis: they may be [batch, heads, seq, head_dim]."""


class LseWarning(FluxlabWarning):
    """``enable_sequence_parallel`` under ring with a backend whose LSE does not follow the contract."""


class DiffusersBackendWarning(FluxlabWarning):
    """A diffusers attention setting meets a fluxlab-attached model: the message says what runs instead."""


# Older, finer names, kept importable (here and where they were defined): each is one of the classes above.
InvalidBackendSpecError = UnknownDtypeError = InvalidSizeError = InvalidSettingError = LoadArgumentError = \
    LimitExceededError = CaptureError = UnsupportedAttentionCallError = OffloadError = DecideInputError = \
    MaskNotSupportedError = InvalidInputError
CaptureLimitError, SpawnError, BadReferenceError = MemoryBudgetError, BackendUnavailableError, BackendOutputError
RecordIntegrityError = RecordsFolderError = InvalidPlanError = PlanMismatchError = ResultFileError = \
    OutputFolderError = InvalidFileError
RecordsNotFoundError = PlanNotFoundError = ModelSourceError = FileMissingError
AttachError = PipelineBusyError = UsageError
