// A local OpenID provider for the web approval page's e2e test (tests/tests/approver_web.rs).
// Usage: node server.js PORT REDIRECT_URI
// Prints "ready <issuer>" on stdout once it listens. One client: id "confgate", secret
// "confgate-test-secret", code flow with PKCE. The login page asks for a user name (no
// password): users "alice" (group "sre") and "mallory" (no group) exist.
import http from "node:http";
import { URL } from "node:url";
import Provider from "oidc-provider";

const port = Number(process.argv[2]);
const redirectUri = process.argv[3];
const issuer = `http://127.0.0.1:${port}`;

const users = {
  alice: { preferred_username: "alice", email: "alice@example.test", groups: ["sre"] },
  mallory: { preferred_username: "mallory", email: "mallory@example.test", groups: [] },
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "confgate",
      client_secret: "confgate-test-secret",
      redirect_uris: [redirectUri],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { required: () => true },
  scopes: ["openid", "profile", "email", "groups"],
  claims: {
    openid: ["sub"],
    profile: ["preferred_username"],
    email: ["email"],
    groups: ["groups"],
  },
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => {
    if (!users[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...users[id] }) };
  },
  cookies: { keys: ["confgate-e2e-cookie-key"] },
});
provider.on("server_error", (ctx, err) => console.error("server_error", err));

function page(res, uid) {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(`<!doctype html><html><head><title>Test IdP sign-in</title></head><body>
<h1>Test identity provider</h1>
<form method="post" action="/interaction/${uid}/login">
<label>User <input id="username" name="username" autofocus></label>
<button id="idp-submit" type="submit">Sign in</button>
</form></body></html>`);
}

async function readForm(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === "login" && !action) return page(res, uid);
  let result;
  if (details.prompt.name === "login") {
    const user = (await readForm(req)).get("username");
    if (!users[user]) return page(res, uid);
    result = { login: { accountId: user } };
  } else {
    // Consent: grant what the client asked for.
    const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope(String(details.params.scope));
    const missing = details.prompt.details.missingOIDCClaims;
    if (missing) grant.addOIDCClaims(missing);
    result = { consent: { grantId: await grant.save() } };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

const callback = provider.callback();
http
  .createServer(async (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    const m = path.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (m) {
      try {
        await interaction(req, res, m[1], m[2]);
      } catch (e) {
        console.error("interaction", e);
        res.writeHead(500);
        res.end(String(e));
      }
      return;
    }
    callback(req, res);
  })
  .listen(port, "127.0.0.1", () => console.log(`ready ${issuer}`));
