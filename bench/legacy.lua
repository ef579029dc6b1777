-- wrk script for figure c: the same tag asked for by a legacy client or by a modern one.
-- wrk's -H keeps only the last of repeated header names, so the request is built by hand:
-- Docker 17.06 sends each Accept on its own line.
--   wrk ... URL -- legacy   Docker 17.06.2-ee (Windows Docker EE's engine), no OCI: rewritten
--   wrk ... URL -- modern   an OCI-index-accepting client: passed through
local req

function init(args)
  local mode = args[1] or "legacy"
  local lines = { "GET " .. wrk.path .. " HTTP/1.1", "Host: " .. wrk.headers["Host"] }
  if mode == "legacy" then
    for _, a in ipairs({
      "application/vnd.docker.distribution.manifest.v1+prettyjws",
      "application/json",
      "application/vnd.docker.distribution.manifest.v2+json",
      "application/vnd.docker.distribution.manifest.list.v2+json",
    }) do
      table.insert(lines, "Accept: " .. a)
    end
    table.insert(lines, "User-Agent: docker/17.06.2-ee-19 go/go1.8.7 git-commit/6b5fb4d "
      .. "kernel/3.10.0 os/linux arch/amd64 "
      .. "UpstreamClient(Docker-Client/17.06.2-ee-19 \\(linux\\))")
  else
    table.insert(lines, "Accept: application/vnd.oci.image.index.v1+json, "
      .. "application/vnd.oci.image.manifest.v1+json, "
      .. "application/vnd.docker.distribution.manifest.list.v2+json, "
      .. "application/vnd.docker.distribution.manifest.v2+json")
    table.insert(lines, "User-Agent: containerd/v1.6.20")
  end
  req = table.concat(lines, "\r\n") .. "\r\n\r\n"
end

function request()
  return req
end
