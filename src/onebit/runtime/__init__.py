"""Run exported models from Python: the ctypes binding to the onebit C runtime."""

from onebit.runtime.binding import (CRuntime, RuntimeMismatchError, build_runtime, cache_root,
                                    compile_export)

__all__ = ["CRuntime", "RuntimeMismatchError", "build_runtime", "cache_root", "compile_export",
           "c_engine_logits"]


def c_engine_logits(model, images, *, mode: str = "float", threads: int = 1, sources=None,
                    calibration=None, batch_size: int = 256, progress: bool | None = False):
    """Logits of ``model`` on ``images`` computed by the C runtime (what ``onebit eval --engine c`` runs).

    ``sources``: an existing ``onebit export --format c`` folder to compile instead of exporting
    ``model``; it is refused unless it was generated from ``model``. ``calibration``: a callable
    returning uint8 training images, called only when the integer mode has to be exported.
    """
    if sources is not None:
        runtime = compile_export(sources, threads=threads)
    else:
        calib = calibration() if (mode != "float" and calibration is not None) else None
        runtime = build_runtime(model, calibration_images=calib, threads=threads,
                                **({"calibration_count": len(calib)} if calib is not None else {}))
    runtime.check(model)
    return runtime.run(images, mode=mode, threads=threads, batch_size=batch_size, progress=progress)
