"""Task helpers on top of chat: prompts, tolerant parsers of Qwen2.5-VL's output formats, typed results in
the ORIGINAL image's coordinates, pictures, and a GUI-agent loop.

    dets = parse_boxes(result.text, input_size=result.media[0].input_size, image_size=image.size)
    doc = parse_document(html, input_size=..., image_size=...); doc.to_markdown()
    parse_time_span("The given query happens in 64.0 - 72.0 seconds.")  # (64.0, 72.0)
    calls = parse_tool_calls(text, input_size=(1092, 2408), screen_size=(1080, 2400))

All sizes are (width, height).
"""

from .agent import Action, Environment, Step, ToolCalls, Transcript, agent_messages, parse_tool_calls, run_agent
from .document import DOC_PROMPT, DOC_SYSTEM, Block, Document, parse_document
from .draw import draw_actions, draw_detections, draw_document
from .grounding import Detection, Detections, detect_prompt, grounding_prompt, parse_boxes, to_input_coords
from .tools import computer_use_tool, mobile_use_tool, screen_input_size, tool_system_prompt
from .video import (DENSE_CAPTION_PROMPT, Event, Events, TimeSpan, find_time_span, format_timestamp, parse_events,
                    parse_time_span, parse_timestamp, temporal_grounding_prompt)

__all__ = [
    "parse_boxes", "parse_document", "parse_time_span", "find_time_span", "TimeSpan", "parse_tool_calls",
    "parse_events", "parse_timestamp",
    "Detection", "Detections", "Block", "Document", "Event", "Events", "Action", "ToolCalls",
    "Environment", "Step", "Transcript", "run_agent", "agent_messages",
    "mobile_use_tool", "computer_use_tool", "tool_system_prompt", "screen_input_size",
    "detect_prompt", "grounding_prompt", "temporal_grounding_prompt", "to_input_coords", "format_timestamp",
    "DOC_PROMPT", "DOC_SYSTEM", "DENSE_CAPTION_PROMPT",
    "draw_detections", "draw_document", "draw_actions",
]
