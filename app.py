"""LLM Playground: `python app.py` serves the app at http://127.0.0.1:7860."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from core.models.registry import DEFAULT_CHAT_MODEL

# Tabs a classroom deployment leaves out: heavy, and not what a class is shown (like LlamaBoard's demo mode).
CLASSROOM_HIDDEN_TABS = ("finetune", "quantize")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--model", default=DEFAULT_CHAT_MODEL, help="default chat model: hub id or local folder")
    parser.add_argument("--offline", action="store_true", help="never touch the Hugging Face Hub")
    parser.add_argument("--tabs", default=os.environ.get("LLMPG_TABS", ""),
                        help="comma-separated subset of tabs, e.g. chat,explain (or set LLMPG_TABS)")
    parser.add_argument("--classroom", action="store_true",
                        help="a shared class machine: no Fine-tune/Quantize tabs, short replies, small run budgets "
                             "(or LLMPG_CLASSROOM=1)")
    parser.add_argument("--allow-remote-code", action="store_true",
                        help="let users load models that run their own Python (LLMPG_ALLOW_REMOTE_CODE=1)")
    parser.add_argument("--allow-hub-push", action="store_true",
                        help="let users push fine-tuned models to the Hub (LLMPG_ALLOW_HUB_PUSH=1)")
    parser.add_argument("--allow-remote-servers", action="store_true",
                        help="let users chat with models on other OpenAI-compatible servers (LLMPG_ALLOW_REMOTE_SERVERS=1)")
    parser.add_argument("--runtime", choices=("auto", "torch", "onnx"), default=None,
                        help="chat runtime: auto (ONNX Runtime on a CPU when it keeps quality), torch or onnx "
                             "(LLMPG_CHAT_RUNTIME)")
    parser.add_argument("--chat-batch", type=int, default=None,
                        help="chat replies decoded together at most; 1 = one at a time (LLMPG_CHAT_BATCH, default 16)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace):
    """Environment first (Spaces set variables), flags on top."""
    from core.common.settings import Settings

    settings = Settings.from_env()
    if args.classroom and not settings.classroom:
        room = Settings.classroom_defaults()
        settings = dataclasses.replace(settings, classroom=True, run_seconds=room.run_seconds,
                                       max_train_examples=room.max_train_examples, max_new_tokens=room.max_new_tokens)
    return dataclasses.replace(settings, allow_remote_code=args.allow_remote_code or settings.allow_remote_code,
                               allow_hub_push=args.allow_hub_push or settings.allow_hub_push,
                               allow_remote_servers=args.allow_remote_servers or settings.allow_remote_servers,
                               chat_runtime=args.runtime or settings.chat_runtime,
                               chat_batch=args.chat_batch or settings.chat_batch)


def chosen_tabs(args: argparse.Namespace, classroom: bool) -> tuple[str, ...]:
    from ui.app import TABS

    tabs = tuple(t.strip() for t in args.tabs.split(",") if t.strip()) or tuple(TABS)
    return tuple(t for t in tabs if not (classroom and t in CLASSROOM_HIDDEN_TABS))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.offline:
        # Set before transformers / huggingface_hub are imported so no request is ever tried.
        os.environ["HF_HUB_OFFLINE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from api.openai_server import launch
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.services import Services
    from ui.app import build_app, launch_options

    configure_threads()
    settings = settings_from(args)
    logging.getLogger("llm_playground").info(settings.describe())
    tabs = chosen_tabs(args, settings.classroom)
    # The default models of the chosen tabs are prepared in the background as soon as the server listens.
    services = Services(settings=settings, default_chat_model=args.model, prepare_tabs=tabs,
                        manager=ModelManager(offline=args.offline, allow_remote_code=settings.allow_remote_code))
    demo = build_app(services, tabs)
    launch(demo, services, server_name=args.host, server_port=args.port, share=args.share, **launch_options())


if __name__ == "__main__":
    main()
