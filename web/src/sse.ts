// Server-sent events off a fetch body: the data of each event, as it arrives. Comment lines
// (": veil-receipt ...") and blocks without data are skipped, as the Python client's parser does.

export async function* eventData(body: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<string> {
  const reader = body.pipeThrough(new TextDecoderStream() as unknown as ReadableWritablePair<string, Uint8Array>).getReader();
  let pending = "";
  let data: string[] = [];
  let hasData = false;
  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      let cut: number;
      while ((cut = pending.search(/\r\n|\r|\n/)) >= 0) {
        const line = pending.slice(0, cut);
        pending = pending.slice(cut + (pending.startsWith("\r\n", cut) ? 2 : 1));
        if (line === "") {
          if (hasData) yield data.join("\n");
          data = [];
          hasData = false;
        } else if (line.startsWith(":")) {
          continue;
        } else {
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (name === "data") {
            data.push(value);
            hasData = true;
          }
        }
      }
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.releaseLock();
  }
}
