"""Run inside atoma-sdk's own virtual environment (it pins pydantic<2.11): drive the published
client against a Veil gateway and print what it decrypted as one JSON line."""

from __future__ import annotations

import json
import sys

from atoma_sdk import AtomaSDK


def main() -> None:
    server_url, api_key, chat_model, embed_model = sys.argv[1:5]
    out: dict[str, object] = {}
    with AtomaSDK(bearer_auth=api_key, server_url=server_url) as sdk:
        reply = sdk.confidential_chat.create(
            model=chat_model,
            messages=[{"role": "user", "content": "The capital of France is"}],
            max_tokens=24,
        )
        out["chat"] = {
            "content": reply.choices[0].message.content,
            "usage": reply.usage.model_dump() if reply.usage else None,
        }
        pieces = []
        for event in sdk.confidential_chat.create_stream(
            model=chat_model,
            messages=[{"role": "user", "content": "Once upon a time"}],
            max_tokens=24,
        ):
            for choice in event.data.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
        out["stream"] = pieces
        embedded = sdk.confidential_embeddings.create(model=embed_model, input="private text")
        out["embedding_dims"] = len(embedded.data[0].embedding)
        out["embedding_usage"] = embedded.usage.prompt_tokens
    print(json.dumps(out))


if __name__ == "__main__":
    main()
