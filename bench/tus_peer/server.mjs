// The tus reference for `make bench`: @tus/server with @tus/file-store, nothing else.
//   node server.mjs PORT DIRECTORY      (modules resolved from NODE_PATH / bench/.cache/tus)
// Prints "listening" once it accepts connections; SIGTERM stops it.
import http from 'node:http'
import {Server} from '@tus/server'
import {FileStore} from '@tus/file-store'

const [port, directory] = process.argv.slice(2)
const tus = new Server({path: '/files', datastore: new FileStore({directory})})
const server = http.createServer((req, res) => tus.handle(req, res))
server.keepAliveTimeout = 60000
server.listen(Number(port), '127.0.0.1', () => console.log('listening'))
process.on('SIGTERM', () => server.close(() => process.exit(0)))
process.on('SIGINT', () => process.exit(0))
