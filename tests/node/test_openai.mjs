// `dseek serve` driven by the official OpenAI Node client (the `openai` package from npm): chat and
// completions, streamed and whole, n > 1, logprobs, errors surfacing as the client's APIError
// subclasses with the right status, a bounded load test (64 requests over 16 concurrent
// connections: every answer arrives and equals the same request sent alone — nothing lost or
// mixed up), and SIGTERM ending the server with exit code 0.
import { spawn } from 'node:child_process';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const here = path.dirname(fileURLToPath(import.meta.url));
const modelDir = path.join(here, '..', 'fixtures', 'models', 'export_v3');
const binary = process.env.DSEEK_BINARY;
assert.ok(binary, 'DSEEK_BINARY must name the dseek binary');

// Starts `dseek serve` on a free port; resolves when it prints its address.
function startServer(extra = []) {
  const proc = spawn(binary, ['serve', '--model', modelDir, '--port', '0', '--served-model-name',
    'tiny', '--max-body-bytes', '65536', '--threads', '2', ...extra],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    let stdout = '';
    proc.stdout.on('data', (d) => {
      stdout += d;
      const m = stdout.match(/listening on (http:\/\/[^\s]+)/);
      if (m) resolve({ proc, url: m[1], stderr: () => stderr });
    });
    proc.on('exit', (code) => reject(new Error(`dseek serve exited ${code}: ${stderr}`)));
  });
}

function stopServer(server) {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null) { resolve(server.proc.exitCode); return; }
    server.proc.on('exit', (code) => resolve(code));
    server.proc.kill('SIGTERM');
  });
}

let server;
let client;
before(async () => {
  server = await startServer();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0,
    timeout: 60000 });
});
after(async () => {
  if (server) await stopServer(server);
});

const chatRequest = (text, extra = {}) => ({
  model: 'tiny', messages: [{ role: 'user', content: text }], temperature: 0, max_tokens: 12,
  ...extra,
});

test('chat: whole and streamed responses agree', async () => {
  const whole = await client.chat.completions.create(chatRequest('Hello there'));
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.model, 'tiny');
  assert.equal(whole.choices.length, 1);
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(whole.choices[0].finish_reason));
  assert.ok(whole.usage.prompt_tokens > 3);
  assert.equal(whole.usage.total_tokens, whole.usage.prompt_tokens + whole.usage.completion_tokens);

  const stream = await client.chat.completions.create(
    chatRequest('Hello there', { stream: true, stream_options: { include_usage: true } }));
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.deepEqual(usage, whole.usage);
});

test('completions: whole and streamed, logprobs', async () => {
  const request = { model: 'tiny', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 };
  const whole = await client.completions.create({ ...request, logprobs: 3 });
  assert.equal(whole.object, 'text_completion');
  const lp = whole.choices[0].logprobs;
  assert.equal(lp.tokens.length, whole.usage.completion_tokens);
  assert.equal(lp.top_logprobs[0] && Object.keys(lp.top_logprobs[0]).length, 3);
  let text = '';
  for await (const chunk of await client.completions.create({ ...request, stream: true })) {
    text += chunk.choices[0]?.text ?? '';
  }
  assert.equal(text, whole.choices[0].text);
});

test('chat: n choices with a seed, and top_logprobs', async () => {
  const request = chatRequest('Pick a colour', { temperature: 1.0, n: 3, seed: 5, max_tokens: 6 });
  const a = await client.chat.completions.create(request);
  const b = await client.chat.completions.create(request);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
  const contents = (r) => r.choices.map((c) => c.message.content);
  assert.deepEqual(contents(a), contents(b));
  const lp = await client.chat.completions.create(
    chatRequest('Pick a colour', { logprobs: true, top_logprobs: 2, max_tokens: 4 }));
  const content = lp.choices[0].logprobs.content;
  assert.equal(content.length, lp.usage.completion_tokens);
  for (const entry of content) {
    assert.equal(entry.top_logprobs.length, 2);
    assert.ok(entry.logprob <= 0);
    assert.ok(entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob);
  }
});

test('errors surface as the client\'s APIError subclasses', async () => {
  await assert.rejects(client.chat.completions.create({ ...chatRequest('x'), model: 'gpt-4o' }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && /gpt-4o/.test(e.message));
  await assert.rejects(client.chat.completions.create(chatRequest('x', { temperature: 7 })),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature');
  await assert.rejects(client.chat.completions.create(chatRequest('x', { messages: [] })),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages');
  await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'y'.repeat(100000) }),
    (e) => e instanceof OpenAI.APIError && e.status === 413);
  await assert.rejects(client.completions.create({ model: 'tiny', prompt: Array(600).fill(7) }),
    (e) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded');
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
});

test('API key: wrong key is AuthenticationError (401), right key works', async () => {
  const keyed = await startServer(['--api-key', 'k3y']);
  try {
    const wrong = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'nope', maxRetries: 0 });
    await assert.rejects(wrong.models.list(),
      (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
    const right = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'k3y', maxRetries: 0 });
    assert.equal((await right.models.list()).data[0].id, 'tiny');
  } finally {
    assert.equal(await stopServer(keyed), 0);
  }
});

test('load: 64 requests over 16 connections, none lost or mixed up', async () => {
  const requests = Array.from({ length: 64 }, (_, i) => ({
    model: 'tiny', prompt: `Request ${i}: the number ${i * 7919} is`, max_tokens: 6 + (i % 5),
    temperature: 0.8, seed: 1000 + i, ignore_eos: true,
  }));
  const alone = [];
  for (const r of requests) alone.push((await client.completions.create(r)).choices[0].text);
  assert.ok(new Set(alone).size > 32, 'distinct requests should give distinct answers');
  const together = new Array(requests.length);
  let next = 0;
  const worker = async () => {
    while (next < requests.length) {
      const i = next++;
      const r = await client.completions.create(requests[i]);
      assert.equal(r.usage.completion_tokens, requests[i].max_tokens);
      together[i] = r.choices[0].text;
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  assert.deepEqual(together, alone);
});

test('SIGTERM: the server drains and exits 0', async () => {
  const own = await startServer();
  const c = new OpenAI({ baseURL: `${own.url}/v1`, apiKey: 'x', maxRetries: 0 });
  const inflight = c.completions.create({ model: 'tiny', prompt: 'Long', max_tokens: 64,
    temperature: 0, ignore_eos: true });
  // Wait until the engine runs it (the metrics say so), then signal.
  for (let i = 0; i < 500; ++i) {
    const metrics = await (await fetch(`${own.url}/metrics`)).text();
    if (/^dseek_requests_running [1-9]/m.test(metrics)) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  const code = await stopServer(own);
  assert.equal(code, 0, own.stderr());
  const r = await inflight;
  assert.equal(r.usage.completion_tokens, 64);
});
