// A real openai-node (6.x) client for tests/test_e2e_openai_node.py.
// Usage: NODE_PATH=<a node_modules holding openai> node responses_client.cjs BASE_URL
// Prints one JSON object: what each step saw (or the error the SDK raised).
const { OpenAI } = require("openai");

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-node-test", maxRetries: 0 });
const model = "gpt-test";

async function step(seen, name, run) {
  try {
    seen[name] = await run();
  } catch (err) {
    seen[name] = {
      error: err?.constructor?.name ?? "Error",
      status: err?.status ?? null,
      code: err?.code ?? null,
      type: err?.type ?? null,
      message: String(err?.message ?? err),
    };
  }
}

async function main() {
  const seen = { sdk_version: require("openai/version").VERSION };
  let firstId = null;

  // An SSE stream, read event by event.
  await step(seen, "stream", async () => {
    const stream = await client.responses.create({
      model,
      input: "hello from node fake:deltas=5",
      stream: true,
    });
    const types = [];
    let text = "";
    let completed = null;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") completed = event.response;
    }
    firstId = completed?.id ?? null;
    return { types, text, id: firstId, output: completed?.output ?? null };
  });

  // A follow-up with previous_response_id, through the SDK's stream helper.
  await step(seen, "follow_up", async () => {
    const stream = client.responses.stream({
      model,
      input: "and a follow-up",
      previous_response_id: firstId,
    });
    const final = await stream.finalResponse();
    return { id: final.id, previous: final.previous_response_id, output_text: final.output_text };
  });

  // One JSON Response (no stream).
  await step(seen, "json", async () => {
    const response = await client.responses.create({ model, input: "a json answer please" });
    return { object: response.object, status: response.status, output_text: response.output_text };
  });

  // Errors: an unknown previous_response_id, and an upstream error before the answer.
  await step(seen, "unknown_previous", () =>
    client.responses.create({ model, input: "x", previous_response_id: "resp_unknown" }),
  );
  await step(seen, "upstream_error", () =>
    client.responses.create({ model, input: "x fake:error=429:rate_limit_exceeded", stream: true }),
  );

  process.stdout.write(JSON.stringify(seen) + "\n");
}

main();
