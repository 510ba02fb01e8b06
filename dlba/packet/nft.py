"""nftables JSON transactions in-process, through the system's libnftables (Debian
``libnftables1``, which ``nftables`` depends on), or through ``nft -j -f -`` when the
library cannot be loaded.  In-process, a transaction of a few bucket changes costs well
under a millisecond; a process start costs several.

Only JSON goes in (built by `dlba.kernelpath`), never text with values pasted into it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
from typing import Any

NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_INPUT_JSON = 1 << 1


class NftError(Exception):
    """nftables refused a transaction; the message is nftables' own."""


class Nft:
    """One libnftables context, or the ``nft`` command when there is no library."""

    def __init__(self, use_library: bool = True) -> None:
        self._lib: Any = None
        self._ctx: Any = None
        self.why_command = ""
        if use_library:
            self._open()

    @property
    def mechanism(self) -> str:
        return "libnftables" if self._ctx else "nft -j"

    def _open(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            self.why_command = f"libnftables not loadable: {e}"
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            self.why_command = "nft_ctx_new failed"
            return
        lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
        if hasattr(lib, "nft_ctx_input_set_flags"):
            lib.nft_ctx_input_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_input_set_flags(ctx, NFT_CTX_INPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib, self._ctx = lib, ctx

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def run(self, document: dict[str, Any]) -> dict[str, Any]:
        """Apply one transaction (or run a list command); its JSON output, if any."""
        if not document.get("nftables"):
            return {}
        text = json.dumps(document).encode()
        if self._ctx:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text)
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
            if rc != 0:
                raise NftError(err.decode(errors="replace").strip() or f"nftables: error {rc}")
        else:
            try:
                done = subprocess.run(
                    ["nft", "-j", "-f", "-"], input=text, capture_output=True, timeout=10
                )
            except (FileNotFoundError, subprocess.TimeoutExpired) as e:
                raise NftError(f"nft: {e}") from None
            if done.returncode != 0:
                raise NftError(done.stderr.decode(errors="replace").strip())
            out = done.stdout
        return json.loads(out) if out.strip() else {}

    def list_set(self, family: str, table: str, name: str) -> dict[str, Any]:
        return self.run(
            {"nftables": [{"list": {"set": {"family": family, "table": table, "name": name}}}]}
        )

    def list_table(self, family: str, table: str) -> dict[str, Any]:
        return self.run({"nftables": [{"list": {"table": {"family": family, "name": table}}}]})
