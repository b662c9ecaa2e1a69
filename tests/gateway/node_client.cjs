// node-postgres (npm `pg`, installed in tests/idp) through the gateway: simple queries, the
// unnamed and named extended protocol, an error; prints what it got as one JSON line.
// Connection settings (and the secret) come from the PG* environment, never argv.
const { Client } = require("pg");

async function main() {
  const tag = process.argv[2] || "node";
  const client = new Client();
  await client.connect();
  const out = {};
  out.simple = (await client.query(`SELECT 'node' AS who /* ${tag} */`)).rows;
  out.sum = (await client.query(`SELECT $1::int + $2::int AS sum /* ${tag} */`, [2, 3])).rows;
  await client.query(`CREATE TABLE IF NOT EXISTS node_items (id int, name text) /* ${tag} */`);
  for (let i = 0; i < 3; i++) {
    await client.query({
      name: `insert-item-${tag}`,
      text: `INSERT INTO node_items VALUES ($1, $2) /* ${tag} */`,
      values: [i, `n${i}`],
    });
  }
  out.count = (
    await client.query({
      name: `count-items-${tag}`,
      text: `SELECT count(*)::int AS n FROM node_items /* ${tag} */`,
    })
  ).rows;
  try {
    await client.query(`SELECT 1 / 0 /* ${tag} */`);
  } catch (error) {
    out.error = error.code;
  }
  await client.end();
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
