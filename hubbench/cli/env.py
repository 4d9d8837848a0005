"""`hubbench env`: the environment rows record (optional packages included), the peak FLOP/s."""

from __future__ import annotations

import typer

from hubbench.cli.common import LIST_HELP


def register(app: typer.Typer) -> None:
    @app.command("env")
    def env_cmd(
        calibrate: bool = typer.Option(
            False,
            "--calibrate",
            help="Measure the matmul peak and the copy bandwidth here and cache them (MFU, the "
            "speed of light); refused on a busy machine.",
        ),
        dtype: list[str] | None = typer.Option(
            None,
            "--dtype",
            help=f"Matmul dtypes to calibrate ({LIST_HELP}; default: fp32, the suites' dtype).",
        ),
        force: bool = typer.Option(
            False,
            "--force",
            help="Store the calibration even on a busy machine, marked busy (its peaks read low).",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        threads: int = typer.Option(
            None, "--threads", help="torch threads to calibrate with (default: the cells')."
        ),
    ) -> None:
        """Show the environment rows record, optional packages, and the peaks (MFU, speed of light).

        Examples:
          hubbench env
          hubbench env --calibrate --device cpu
          hubbench env --calibrate --dtype fp32,bf16
        """
        import torch
        from rich.markup import escape

        from hubbench.cli.common import console, listed
        from hubbench.cli.tables import env_table
        from hubbench.errors import ConfigError
        from hubbench.measure import calibration as cal
        from hubbench.measure import env as envmod
        from hubbench.measure.calibration import MEMORY_KEY
        from hubbench.measure.device import torch_device
        from hubbench.measure.peaks import peak_bandwidth, peak_flops
        from hubbench.plan.fields import default_threads, resolve_device, usable_cpus
        from hubbench.report import format as fmt

        out = console()
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be >= 1 (got {threads})")
        dtypes = cal.parse_dtypes(listed(dtype, "--dtype"))
        if (dtype or force) and not calibrate:
            raise ConfigError("--dtype and --force go with --calibrate")
        torch.set_num_threads(threads or default_threads())  # calibrations are per thread count
        dev = torch_device(resolve_device(device, "--device"))
        info = {**envmod.host_env(), **envmod.torch_env()}
        info["device"] = f"{dev} ({envmod.device_name(dev)})"
        info["threads"] = (
            f"{torch.get_num_threads()} here; {default_threads()} per cell by default "
            f"({usable_cpus()} CPUs usable)"
        )
        if calibrate:
            err = console(stderr=True)

            def news(text: str) -> None:
                err.print(f"[dim]calibrating: {escape(text)}[/]")

            entries = cal.calibrate(dev, dtypes, force=force, progress=news)
            busy = entries[MEMORY_KEY]["load"]["busy"]
            if busy:
                err.print(f"[yellow]warning: stored on a busy machine (--force): {escape(busy)}[/]")
        calibration = cal.load_calibration(dev)
        for name in ("fp32", "bf16", "fp16"):
            peak, source = peak_flops(dev.type, envmod.device_name(dev), name, calibration)
            info[f"peak {name}"] = (
                f"{fmt.si_unit(peak, 'FLOP/s')} ({source})"
                if peak
                else "unknown (no GPU table entry, not calibrated): MFU stays empty"
            )
        bandwidth, source = peak_bandwidth(dev.type, envmod.device_name(dev), calibration)
        info["peak bandwidth"] = (
            f"{fmt.si_unit(bandwidth, 'B/s')} ({source})"
            if bandwidth
            else "unknown (no GPU table entry, not calibrated): the speed of light is compute-only"
        )
        info["calibration load"] = _load_text(calibration)
        info["calibration file"] = str(cal.calibration_path())
        out.print(env_table(info))


def _load_text(calibration: dict) -> str | None:
    """What the machine was doing when the newest calibrated entry was measured."""
    dated = [e for e in calibration.values() if e.get("load")]
    if not dated:
        return None
    entry = max(dated, key=lambda e: e["utc_time"])
    load = entry["load"]
    share = "-" if load["cpu_share"] is None else f"{100 * load['cpu_share']:.0f}%"
    text = (
        f"noise sentinel spread {100 * load['sentinel_spread']:.0f}%, CPU share {share}, load "
        f"average {load['load_average']} ({entry['utc_time']})"
    )
    return text + (f"; BUSY: {load['busy']}" if load["busy"] else "")
