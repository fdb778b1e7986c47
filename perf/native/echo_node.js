// Node.js echo server for the native comparison: prints "READY <port>".
const net = require("net");
const server = net.createServer({ noDelay: true }, (sock) => {
  sock.on("data", (data) => sock.write(data));
  sock.on("error", () => sock.destroy());
});
server.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  console.log(`READY ${server.address().port}`);
});
process.on("SIGINT", () => process.exit(0));
