"""The HTTP app: vLLM's OpenAI-compatible endpoints, /health, /metrics, and the dev
endpoints (sleep, wake, collective_rpc) only in dev mode; the API key guards /v1."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from gpumod.testing.fake_vllm.common import SLEEP_TAGS, TOOL_CHOICE_ERROR, elog, env_float, log
from gpumod.testing.fake_vllm.engine import Engine
from gpumod.testing.fake_vllm.replies import (
    Replies,
    count_tokens,
    error_response,
    fragments,
    pieces,
    text_of,
)


def build_app(engine: Engine) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    replies = Replies(engine)
    guarded = ("/v1", "/v2", "/inference", "/cohere")

    def authorised(request: Request) -> bool:
        if engine.api_key is None or request.method == "OPTIONS":
            return True
        if not request.url.path.startswith(guarded):
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token == engine.api_key

    async def body_of(request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response("Invalid JSON body", 400, "BadRequestError")
        if not isinstance(body, dict):
            return error_response("Request body must be a JSON object", 400, "BadRequestError")
        model = body.get("model")
        if model is not None and model not in engine.served_names:
            return error_response(f"The model `{model}` does not exist.", 404, "NotFoundError",
                          "model")
        return body

    def sleeping_error() -> Response:
        return error_response("The engine is sleeping; wake it up with POST /wake_up first.", 503,
                      "ServiceUnavailableError")

    def usage(prompt: int, completion: int) -> dict[str, Any]:
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                "completion_tokens": completion, "prompt_tokens_details": None}

    def account(prompt: int, completion: int, finish: str) -> None:
        engine.prompt_tokens += prompt
        engine.generation_tokens += completion
        engine.successes[finish] = engine.successes.get(finish, 0) + 1

    async def pause() -> None:
        delay = env_float("FAKE_VLLM_TOKEN_DELAY", 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    # -- open endpoints
    async def health(request: Request) -> Response:
        if engine.workers is not None and await asyncio.to_thread(engine.workers.check) != "":
            return Response(status_code=500)  # a Ray worker died: the engine is dead
        return Response(status_code=200)

    async def metrics(request: Request) -> Response:
        label = f'engine="0",model_name="{engine.served_names[0]}"'
        in_flight = engine.running * 512
        kv_perc = min(in_flight / engine.kv_tokens, 1.0) if engine.kv_tokens else 0.0
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} {float(engine.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{label}}} 0.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{label}}} {kv_perc}",
            "# HELP vllm:engine_sleep_state Engine sleep state; awake = 0 means engine is "
            "sleeping; weights_offloaded = 1 means sleep level 1.",
            "# TYPE vllm:engine_sleep_state gauge",
            f'vllm:engine_sleep_state{{{label},sleep_state="awake"}} '
            f"{0.0 if engine.sleeping else 1.0}",
            f'vllm:engine_sleep_state{{{label},sleep_state="weights_offloaded"}} '
            f"{1.0 if engine.sleep_level == 1 else 0.0}",
            f'vllm:engine_sleep_state{{{label},sleep_state="discard_all"}} '
            f"{1.0 if engine.sleep_level == 2 else 0.0}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{label}}} {float(engine.prompt_tokens)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{label}}} {float(engine.generation_tokens)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason in ("stop", "length", "tool_calls"):
            lines.append(f'vllm:request_success_total{{{label},finished_reason="{reason}"}} '
                         f"{float(engine.successes.get(reason, 0))}")
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": engine.created, "owned_by": "vllm",
                 "root": engine.model, "parent": None, "max_model_len": engine.max_model_len,
                 "permission": [{"id": f"modelperm-{uuid.uuid4().hex}",
                                 "object": "model_permission", "created": engine.created,
                                 "allow_create_engine": False, "allow_sampling": True,
                                 "allow_logprobs": True, "allow_search_indices": False,
                                 "allow_view": True, "allow_fine_tuning": False,
                                 "organization": "*", "group": None, "is_blocking": False}]}
                for name in engine.served_names]
        return JSONResponse({"object": "list", "data": data})

    def tool_policy(body: dict[str, Any]) -> tuple[bool, str | None] | Response:
        """(tool calls may be parsed, forced tool name) or a 400."""
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if not tools:
            return False, None
        if choice is None or choice == "auto":
            if not (engine.args.enable_auto_tool_choice and engine.args.tool_call_parser):
                return error_response(TOOL_CHOICE_ERROR, 400, "BadRequestError")
            return True, None
        if choice == "none":
            return False, None
        if choice == "required":
            first = tools[0].get("function", {}).get("name") if tools else None
            return True, first
        if isinstance(choice, dict):
            return True, (choice.get("function") or {}).get("name") or choice.get("name")
        return error_response(f"Invalid tool_choice: {choice!r}", 400, "BadRequestError",
                      "tool_choice")

    # -- chat
    async def chat(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error_response("messages: Field required", 400, "BadRequestError", "messages")
        if engine.sleeping:
            return sleeping_error()
        policy = tool_policy(body)
        if isinstance(policy, Response):
            return policy
        tools_allowed, forced = policy
        last_user = next((text_of(m.get("content")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        turn = replies.next_turn(last_user, max_tokens=max_tokens, tools_allowed=tools_allowed,
                                 forced_tool=forced)
        prompt_tokens = count_tokens(json.dumps(messages)) + count_tokens(
            json.dumps(body.get("tools") or ""))
        completion_tokens = (count_tokens(turn.reasoning or "")
                             + count_tokens(turn.content or "")
                             + sum(count_tokens(c["name"] + c["arguments"])
                                   for c in turn.tool_calls))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        name = body.get("model") or engine.served_names[0]
        calls: list[dict[str, Any]] = [{"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in turn.tool_calls]
        with_reasoning = bool(engine.args.reasoning_parser)

        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": turn.content,
                                       "refusal": None, "annotations": None, "audio": None,
                                       "function_call": None, "tool_calls": calls}
            if with_reasoning:
                message["reasoning_content"] = turn.reasoning
                message["reasoning"] = turn.reasoning
            account(prompt_tokens, completion_tokens, turn.finish)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": turn.finish, "stop_reason": None}],
                "service_tier": None, "system_fingerprint": None,
                "usage": usage(prompt_tokens, completion_tokens), "prompt_logprobs": None,
                "kv_transfer_params": None})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": name, "choices": [{"index": 0, "delta": delta,
                                                    "logprobs": None,
                                                    "finish_reason": finish,
                                                    **({"stop_reason": None} if finish
                                                       else {})}]})

        async def stream() -> AsyncIterator[str]:
            engine.running += 1
            try:
                yield chunk({"role": "assistant", "content": ""})
                for piece in pieces(turn.reasoning or ""):
                    await pause()
                    yield chunk({"reasoning_content": piece, "reasoning": piece})
                for piece in pieces(turn.content or ""):
                    await pause()
                    yield chunk({"content": piece})
                for i, call in enumerate(calls):
                    await pause()
                    yield chunk({"tool_calls": [{"index": i, "id": call["id"],
                                                 "type": "function",
                                                 "function": {"name": call["function"]["name"],
                                                              "arguments": ""}}]})
                    for frag in fragments(call["function"]["arguments"]):
                        if frag:
                            yield chunk({"tool_calls": [{"index": i,
                                                         "function": {"arguments": frag}}]})
                yield chunk({}, turn.finish)
                if include_usage:
                    yield sse({"id": rid, "object": "chat.completion.chunk",
                               "created": created, "model": name, "choices": [],
                               "usage": usage(prompt_tokens, completion_tokens)})
                yield "data: [DONE]\n\n"
                account(prompt_tokens, completion_tokens, turn.finish)
            finally:
                engine.running -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- completions
    async def completions(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        if not isinstance(prompt, str):
            return error_response("prompt: Field required", 400, "BadRequestError", "prompt")
        if engine.sleeping:
            return sleeping_error()
        max_tokens = body.get("max_tokens") or 16
        if not engine.weights_valid:
            words, finish = ["!!!!!!!!"], "length"
        else:
            words = pieces(f" Echo: {prompt}")
            finish = "stop"
            if len(words) > max_tokens:
                words, finish = words[:max_tokens], "length"
        text = "".join(words)
        p_tok, c_tok = count_tokens(prompt), count_tokens(text)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        name = body.get("model") or engine.served_names[0]
        if not body.get("stream"):
            account(p_tok, c_tok, finish)
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish, "stop_reason": None,
                             "prompt_logprobs": None}],
                "usage": usage(p_tok, c_tok), "service_tier": None,
                "system_fingerprint": None, "kv_transfer_params": None})

        async def stream() -> AsyncIterator[str]:
            engine.running += 1
            try:
                for i, w in enumerate(words):
                    await pause()
                    last = i == len(words) - 1
                    yield sse({"id": rid, "object": "text_completion", "created": created,
                               "model": name,
                               "choices": [{"index": 0, "text": w, "logprobs": None,
                                            "finish_reason": finish if last else None,
                                            "stop_reason": None}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield sse({"id": rid, "object": "text_completion", "created": created,
                               "model": name, "choices": [], "usage": usage(p_tok, c_tok)})
                yield "data: [DONE]\n\n"
                account(p_tok, c_tok, finish)
            finally:
                engine.running -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- responses (gpt-oss style clients)
    async def responses(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        raw_input = body.get("input")
        if raw_input is None:
            return error_response("input: Field required", 400, "BadRequestError", "input")
        if engine.sleeping:
            return sleeping_error()
        if isinstance(raw_input, str):
            last_user = raw_input
        else:
            last_user = next((text_of(m.get("content")) for m in reversed(raw_input)
                              if isinstance(m, dict) and m.get("role") == "user"), "")
        tools = body.get("tools") or []
        turn = replies.next_turn(last_user, max_tokens=body.get("max_output_tokens"),
                                 tools_allowed=bool(tools), forced_tool=None)
        output: list[dict[str, Any]] = []
        if turn.reasoning:
            output.append({"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": [],
                           "content": [{"type": "reasoning_text", "text": turn.reasoning}],
                           "encrypted_content": None, "status": None})
        for c in turn.tool_calls:
            output.append({"id": f"fc_{uuid.uuid4().hex}", "type": "function_call",
                           "call_id": f"call_{uuid.uuid4().hex}", "name": c["name"],
                           "arguments": c["arguments"], "status": "completed"})
        if turn.content or not output:
            output.append({"id": f"msg_{uuid.uuid4().hex}", "type": "message",
                           "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": turn.content or "",
                                        "annotations": [], "logprobs": None}]})
        p_tok = count_tokens(json.dumps(raw_input))
        r_tok = count_tokens(turn.reasoning or "")
        c_tok = r_tok + count_tokens(turn.content or "") + sum(
            count_tokens(c["name"] + c["arguments"]) for c in turn.tool_calls)
        resp = {
            "id": f"resp_{uuid.uuid4().hex}", "object": "response",
            "created_at": int(time.time()), "model": body.get("model") or engine.served_names[0],
            "status": "completed", "background": False, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "metadata": None,
            "output": output, "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": body.get("reasoning"), "service_tier": "auto",
            "temperature": body.get("temperature", 1.0), "text": None,
            "tool_choice": body.get("tool_choice", "auto"), "tools": tools, "top_p": 1.0,
            "truncation": "disabled", "user": None,
            "usage": {"input_tokens": p_tok, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": c_tok,
                      "output_tokens_details": {"reasoning_tokens": r_tok},
                      "total_tokens": p_tok + c_tok},
        }
        account(p_tok, c_tok, turn.finish)
        if not body.get("stream"):
            return JSONResponse(resp)

        async def stream() -> AsyncIterator[str]:
            seq = 0

            def event(kind: str, payload: dict[str, Any]) -> str:
                nonlocal seq
                seq += 1
                data = {"type": kind, "sequence_number": seq - 1, **payload}
                return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

            yield event("response.created",
                        {"response": {**resp, "status": "in_progress", "output": []}})
            for idx, item in enumerate(output):
                yield event("response.output_item.added", {"output_index": idx, "item": item})
                if item["type"] == "message":
                    text = item["content"][0]["text"]
                    for piece in pieces(text):
                        await pause()
                        yield event("response.output_text.delta",
                                    {"item_id": item["id"], "output_index": idx,
                                     "content_index": 0, "delta": piece, "logprobs": []})
                    yield event("response.output_text.done",
                                {"item_id": item["id"], "output_index": idx,
                                 "content_index": 0, "text": text, "logprobs": []})
                yield event("response.output_item.done", {"output_index": idx, "item": item})
            yield event("response.completed", {"response": resp})

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- dev endpoints (VLLM_SERVER_DEV_MODE=1)
    async def sleep_ep(request: Request) -> Response:
        raw = request.query_params.get("level", "1")
        if raw not in {"1", "2"}:
            return error_response(f"Invalid sleep level {raw!r}: expected 1 or 2", 400,
                          "BadRequestError", "level")
        if not engine.args.enable_sleep_mode:
            return error_response("Sleep mode is not enabled in the model config", 500,
                          "InternalServerError")
        if not engine.sleeping:
            engine.sleep(int(raw))
        return Response(status_code=200)

    async def wake_ep(request: Request) -> Response:
        tags = request.query_params.getlist("tags")
        bad = [t for t in tags if t not in SLEEP_TAGS]
        if bad:
            return error_response(f"Unknown wake-up tags {bad}; expected weights and/or kv_cache",
                          400, "BadRequestError", "tags")
        log(f"wake up the engine with tags: {tags or None}", "api_server.py:1005")
        if not engine.args.enable_sleep_mode:
            return error_response("Sleep mode is not enabled in the model config", 500,
                          "InternalServerError")
        engine.wake_up(tags or None)
        return Response(status_code=200)

    async def is_sleeping(request: Request) -> Response:
        return JSONResponse({"is_sleeping": engine.sleeping})

    async def collective_rpc(request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "Invalid JSON format"}, status_code=400)
        method = body.get("method") if isinstance(body, dict) else None
        if not method:
            return JSONResponse({"error": "Missing 'method' in request body"}, status_code=400)
        if method == "reload_weights":
            if "weights" not in engine.awake_tags:
                return error_response("Cannot reload weights while the weights are asleep; call "
                              "/wake_up?tags=weights first", 500, "InternalServerError")
            engine.weights_valid = True
            elog("Reloading weights inplace...", "gpu_model_runner.py:2410")
        elif method not in {"sleep", "wake_up", "is_sleeping"}:
            return error_response(f"Method {method} not found on the worker", 500,
                          "InternalServerError")
        world = engine.args.tensor_parallel_size * engine.args.pipeline_parallel_size
        return JSONResponse({"results": [None] * world})

    async def reset_prefix_cache(request: Request) -> Response:
        elog("Successfully reset prefix cache", "block_pool.py:321")
        return Response(status_code=200)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
    ]
    if engine.dev_mode:
        routes += [
            Route("/sleep", sleep_ep, methods=["POST"]),
            Route("/wake_up", wake_ep, methods=["POST"]),
            Route("/is_sleeping", is_sleeping, methods=["GET"]),
            Route("/collective_rpc", collective_rpc, methods=["POST"]),
            Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from starlette.requests import Request as Req

            if not authorised(Req(scope)):
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(
                    scope, receive, send)
                return
            if engine.workers is not None and engine.workers.dead \
                    and scope["path"].startswith("/v1"):
                await error_response("EngineCore encountered an issue. See stack trace "
                                     "(above) for the root cause.", 500,
                                     "EngineDeadError")(scope, receive, send)
                return
        await app(scope, receive, send)

    return asgi
