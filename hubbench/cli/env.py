"""`hubbench env`: the environment rows record (optional packages included), the peak FLOP/s."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("env")
    def env_cmd(
        calibrate: bool = typer.Option(
            False,
            "--calibrate",
            help="Measure the matmul peak and the copy bandwidth here and cache them (MFU, the "
            "speed of light).",
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
        """
        import torch

        from hubbench import env as envmod
        from hubbench.cli.common import console
        from hubbench.cli.tables import env_table
        from hubbench.config import default_threads, resolve_device, usable_cpus
        from hubbench.errors import ConfigError
        from hubbench.flops import peak_flops
        from hubbench.roofline import peak_bandwidth
        from hubbench.step import torch_device

        out = console()
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be >= 1 (got {threads})")
        torch.set_num_threads(threads or default_threads())  # calibrations are per thread count
        dev = torch_device(resolve_device(device, "--device"))
        info = {**envmod.host_env(), **envmod.torch_env()}
        info["device"] = f"{dev} ({envmod.device_name(dev)})"
        info["threads"] = (
            f"{torch.get_num_threads()} here; {default_threads()} per cell by default "
            f"({usable_cpus()} CPUs usable)"
        )
        if calibrate:
            with out.status(f"timing matmuls on {dev}"):
                envmod.calibrate(dev)
        calibration = envmod.load_calibration(dev)
        for dtype in ("fp32", "bf16", "fp16"):
            peak, source = peak_flops(dev.type, envmod.device_name(dev), dtype, calibration)
            info[f"peak {dtype}"] = (
                f"{peak / 1e12:,.2f} TFLOP/s ({source})"
                if peak
                else "unknown (no GPU table entry, not calibrated): MFU stays empty"
            )
        bandwidth, source = peak_bandwidth(dev.type, envmod.device_name(dev), calibration)
        info["peak bandwidth"] = (
            f"{bandwidth / 1e9:,.1f} GB/s ({source})"
            if bandwidth
            else "unknown (no GPU table entry, not calibrated): the speed of light is compute-only"
        )
        info["calibration file"] = str(envmod.calibration_path())
        out.print(env_table(info))
