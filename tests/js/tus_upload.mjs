// Upload one file with tus-js-client, as a device would: `node tus_upload.mjs CONFIG_JSON`.
// CONFIG: {endpoint, path, token, protocol?, chunkSize?, uploadUrl?, parallelUploads?,
//          uploadLengthDeferred?, overridePatchMethod?, filename?, bytesPerSecond?, retryDelays?}
// Prints one JSON line per event (url, chunk, success, error); exits 0 only on success.
import fs from 'node:fs'
import { Readable, Transform } from 'node:stream'
import { DefaultHttpStack, Upload } from 'tus-js-client'

const config = JSON.parse(process.argv[2])
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n')

// Holds a streamed body to `bytesPerSecond`, so that a test can cut a PATCH part-way.
function throttled(bytesPerSecond) {
  const started = Date.now()
  let sent = 0
  return new Transform({
    transform(chunk, _encoding, done) {
      sent += chunk.length
      const due = started + (sent / bytesPerSecond) * 1000
      setTimeout(() => done(null, chunk), Math.max(0, due - Date.now()))
    },
  })
}

class SlowHttpStack {
  constructor(bytesPerSecond) {
    this.inner = new DefaultHttpStack()
    this.bytesPerSecond = bytesPerSecond
  }
  createRequest(method, url) {
    const request = this.inner.createRequest(method, url)
    const send = request.send.bind(request)
    request.send = (body) => send(body instanceof Readable ? body.pipe(throttled(this.bytesPerSecond)) : body)
    return request
  }
  getName() {
    return 'SlowHttpStack'
  }
}

const size = fs.statSync(config.path).size
const options = {
  endpoint: config.endpoint,
  uploadUrl: config.uploadUrl ?? null,
  headers: { Authorization: `Bearer ${config.token}` },
  protocol: config.protocol ?? 'tus-v1',
  metadata: config.filename ? { filename: config.filename } : {},
  retryDelays: config.retryDelays ?? [200, 500, 1000, 2000],
  parallelUploads: config.parallelUploads ?? 1,
  uploadLengthDeferred: config.uploadLengthDeferred ?? false,
  overridePatchMethod: config.overridePatchMethod ?? false,
  storeFingerprintForResuming: false,
  onChunkComplete: (chunkSize, accepted, total) => say({ event: 'chunk', chunkSize, accepted, total }),
  onUploadUrlAvailable: () => say({ event: 'url', url: upload.url }),
  onSuccess: () => {
    say({ event: 'success', url: upload.url })
    process.exit(0)
  },
  onError: (error) => {
    say({ event: 'error', message: String(error) })
    process.exit(1)
  },
}
if (config.chunkSize) options.chunkSize = config.chunkSize
if (config.bytesPerSecond) options.httpStack = new SlowHttpStack(config.bytesPerSecond)
// A file stream knows its size; parallel uploads refuse the option.
if (!options.uploadLengthDeferred && options.parallelUploads === 1) options.uploadSize = size
// A deferred length needs a stream source (its end is discovered); a file stream otherwise.
const input = options.uploadLengthDeferred ? Readable.from(fs.createReadStream(config.path)) : fs.createReadStream(config.path)
const upload = new Upload(input, options)
upload.start()
