// The TypeScript SDK's OAuth client against a LarkGate gateway, driven by test_typescript_sdk.py.
//
// Usage: node ts_sdk_client.mjs <gateway /mcp URL> <emulated Feishu user> <tool name>
// It connects with the SDK's StreamableHTTPClientTransport and an OAuthClientProvider whose
// "browser" plays the person: it opens the authorization URL, allows the app on the consent
// page, logs in at the emulated Feishu page and reads the code off the final redirect. Then it
// finishes the SDK's auth, reconnects, calls the tool and prints one JSON line with the result.
// Every URL it visits must be on 127.0.0.1.

import { randomBytes } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const [serverUrl, user, toolName, callbackPort] = process.argv.slice(2);
const redirectUrl = `http://127.0.0.1:${callbackPort}/callback`;

function loopbackOnly(url) {
  const host = new URL(url).hostname;
  if (host !== "127.0.0.1") throw new Error(`the test browser only visits 127.0.0.1, not ${host}`);
  return url;
}

// A browser: cookies per host (ports share them, as in real browsers), redirects by hand.
class Browser {
  constructor() {
    this.cookies = new Map();
  }

  async visit(url, init = {}) {
    const headers = { ...(init.headers ?? {}) };
    const jar = this.cookies.get(new URL(url).hostname);
    if (jar && jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    const response = await fetch(loopbackOnly(url), { ...init, headers, redirect: "manual" });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(";");
      const at = pair.indexOf("=");
      const host = new URL(url).hostname;
      if (!this.cookies.has(host)) this.cookies.set(host, new Map());
      this.cookies.get(host).set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
    }
    return response;
  }
}

async function playThePerson(authorizationUrl) {
  const browser = new Browser();
  const consent = await browser.visit(authorizationUrl.toString());
  const page = await consent.text();
  if (consent.status !== 200) throw new Error(`consent page answered ${consent.status}: ${page}`);
  const request = page.match(/name="request" value="([^"]+)"/)[1];
  const action = page.match(/<form method="post" action="([^"]+)"/)[1];
  const decided = await browser.visit(action, {
    method: "POST",
    // A browser sends its page's origin with a form post.
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      origin: new URL(consent.url).origin,
    },
    body: new URLSearchParams({ request, decision: "approve" }).toString(),
  });
  const feishu = await browser.visit(`${decided.headers.get("location")}&emulator_user=${user}`);
  const back = await browser.visit(feishu.headers.get("location"));
  const landing = new URL(back.headers.get("location"));
  if (`${landing.origin}${landing.pathname}` !== redirectUrl) {
    throw new Error(`the gateway sent the browser to ${landing} instead of the redirect URI`);
  }
  return landing.searchParams;
}

class MemoryProvider {
  constructor() {
    this.expectedState = randomBytes(16).toString("hex");
    this.returned = undefined;
  }
  get redirectUrl() {
    return redirectUrl;
  }
  get clientMetadata() {
    return {
      client_name: "TypeScript SDK test client",
      redirect_uris: [redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  state() {
    return this.expectedState;
  }
  clientInformation() {
    return this.client;
  }
  saveClientInformation(info) {
    this.client = info;
  }
  tokens() {
    return this.savedTokens;
  }
  saveTokens(tokens) {
    this.savedTokens = tokens;
  }
  async redirectToAuthorization(authorizationUrl) {
    this.returned = await playThePerson(authorizationUrl);
  }
  saveCodeVerifier(verifier) {
    this.verifier = verifier;
  }
  codeVerifier() {
    return this.verifier;
  }
}

async function connect(provider) {
  const client = new Client({ name: "ts-sdk-test", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider });
  try {
    await client.connect(transport);
    return { client, transport, authorized: true };
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
    return { client, transport, authorized: false };
  }
}

const provider = new MemoryProvider();
let { client, transport, authorized } = await connect(provider);
if (!authorized) {
  const returned = provider.returned;
  if (!returned) throw new Error("the SDK asked for a login but never opened the browser");
  if (returned.get("state") !== provider.expectedState) throw new Error("state came back changed");
  await transport.finishAuth(returned.get("code"));
  ({ client, authorized } = await connect(provider));
  if (!authorized) throw new Error("still unauthorized after finishing the login");
}
const result = await client.callTool({ name: toolName, arguments: { params: { page_size: 5 } } });
console.log(
  JSON.stringify({
    isError: Boolean(result.isError),
    text: result.content.map((c) => c.text ?? "").join("\n"),
    accessToken: provider.savedTokens?.access_token ?? "",
    issuer: provider.returned?.get("iss") ?? "",
  }),
);
await client.close();
