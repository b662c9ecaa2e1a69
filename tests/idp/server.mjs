// The OpenID Connect provider that dbaccess's tests and sandbox log in against.
// `oidc-provider` (OpenID Certified) with the device flow and its development login and
// consent pages, served under /oidc on 127.0.0.1.
//
//   node server.mjs CONFIG.json
//
// CONFIG: {"port": 0, "issuer": "http://127.0.0.1:PORT/oidc", "client_id": "dbaccess-cli",
//          "web_client_id": "dbaccess-web" (the broker's web pages, code flow + PKCE),
//          "tls": {"cert": "server.pem", "key": "server.key"} (optional: https),
//          "users": {"alice": {"sub", "email", "email_verified", "name", "groups": []}},
//          "ttl": {...seconds}, "resource": "urn:..." (optional: an API with JWT access tokens)}
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

import Provider, { errors } from 'oidc-provider';

function fail(message) {
  process.stderr.write(`idp: ${message}\n`);
  process.exit(2);
}

const path = process.argv[2];
if (!path) fail('usage: node server.mjs CONFIG.json');
let config;
try {
  config = JSON.parse(readFileSync(path, 'utf8'));
} catch (error) {
  fail(`cannot read ${path}: ${error.message}`);
}
for (const key of ['port', 'issuer', 'users']) {
  if (config[key] === undefined) fail(`${path}: missing "${key}"`);
}
const issuer = new URL(config.issuer);
if (issuer.hostname !== '127.0.0.1') fail('the issuer must be on 127.0.0.1');
const mount = issuer.pathname.replace(/\/$/, '');
const ttl = { DeviceCode: 600, IdToken: 3600, AccessToken: 3600, RefreshToken: 86400, ...config.ttl };
const clientId = config.client_id ?? 'dbaccess-cli';
const users = config.users;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
// A landmark in the log: it tells a start that hangs in key generation from one that hangs
// building the provider (a hang between the runtime warning and the adapter warning was seen
// twice in CI, cause unknown).
process.stderr.write('idp: signing key made\n');

const provider = new Provider(config.issuer, {
  clients: [{
    client_id: clientId,
    client_name: 'dbaccess CLI',
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
    id_token_signed_response_alg: 'RS256',
  }, {
    // The broker's web pages ([web]): the authorization code flow with PKCE (a public
    // client: PKCE is required). Native, so that its loopback redirect URI matches on any
    // port (RFC 8252 7.3): the broker's port is chosen after the provider starts.
    client_id: config.web_client_id ?? 'dbaccess-web',
    client_name: 'dbaccess approvals',
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/web/callback'],
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [signingKey] },
  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    // An API (config.resource) whose JWT access tokens (RFC 9068: typ at+jwt) carry the
    // CLI's client id as their audience, as Entra's tokens for an app's own API do: the
    // tokens a broker must not take for ID tokens unless it is told to.
    resourceIndicators: {
      enabled: true,
      async getResourceServerInfo(ctx, resourceIndicator) {
        if (!config.resource || resourceIndicator !== config.resource) {
          throw new errors.InvalidTarget();
        }
        return { scope: 'api', audience: clientId, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // The broker verifies the ID token as the bearer token, so the claims it needs
  // (email, groups) must be in the ID token, not only at the userinfo endpoint.
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: user.sub ?? id,
          email: user.email,
          email_verified: user.email_verified ?? true,
          name: user.name,
          preferred_username: id,
          groups: user.groups ?? [],
        };
      },
    };
  },
  async issueRefreshToken(ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
  },
  rotateRefreshToken: true,
  ttl: {
    DeviceCode: ttl.DeviceCode,
    IdToken: ttl.IdToken,
    AccessToken: ttl.AccessToken,
    RefreshToken: ttl.RefreshToken,
    Grant: ttl.RefreshToken,
    Session: ttl.RefreshToken,
    Interaction: 600,
  },
});


const callback = provider.callback();
// With "tls": {"cert", "key"} (PEM files) the issuer is served over https, as msal needs.
const handler = (req, res) => {
  if (req.url === mount || req.url.startsWith(`${mount}/`)) {
    req.originalUrl = req.url;
    req.url = req.url.slice(mount.length) || '/';
    callback(req, res);
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found\n');
};
const server = config.tls
  ? https.createServer({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, handler)
  : http.createServer(handler);
server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${config.issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
