"""LLM Playground: `python app.py` serves the app at http://127.0.0.1:7860."""
from __future__ import annotations

import argparse
import os

from core.registry import DEFAULT_CHAT_MODEL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--model", default=DEFAULT_CHAT_MODEL, help="default chat model: hub id or local folder")
    parser.add_argument("--offline", action="store_true", help="never touch the Hugging Face Hub")
    parser.add_argument("--tabs", default=os.environ.get("LLMPG_TABS", ""),
                        help="comma-separated subset of tabs, e.g. chat,explain (or set LLMPG_TABS)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.offline:
        # Set before transformers / huggingface_hub are imported so no request is ever tried.
        os.environ["HF_HUB_OFFLINE"] = "1"
    from core.device import configure_threads
    from core.model_manager import ModelManager
    from core.services import Services
    from ui.app import TABS, build_app, launch_options

    configure_threads()
    services = Services(manager=ModelManager(offline=args.offline), default_chat_model=args.model)
    tabs = tuple(t.strip() for t in args.tabs.split(",") if t.strip()) or tuple(TABS)
    demo = build_app(services, tabs)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                   **launch_options())


if __name__ == "__main__":
    main()
