"""The live path: an mne-lsl stream in, the attention detector, states out.

``open_stream("lsl:NAME")`` + ``check_stream``  StreamLSL, checked against detector and model
``LiveDetector(source, config, model, sinks)``  pull, causal chain, ring buffer, detect, publish
``StateOutlet``, ``JsonLines``, ``OverrideLog`` outputs and the person's overrides
``Dashboard(address, overrides, states)``       the live page (server-sent events)

Command line: ``brainfm stream``; docs: ``docs/attention.md``.
"""

from brainfm.live.outputs import JsonLines, OverrideLog, StateOutlet
from brainfm.live.runner import LiveDetector, LiveStats
from brainfm.live.server import Dashboard, parse_address
from brainfm.live.source import StreamInput, check_stream, open_stream, stream_name

__all__ = ["Dashboard", "JsonLines", "LiveDetector", "LiveStats", "OverrideLog", "StateOutlet", "StreamInput",
           "check_stream", "open_stream", "parse_address", "stream_name"]
