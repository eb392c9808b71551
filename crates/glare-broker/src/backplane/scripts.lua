-- Shared head of every glare backplane script (see backplane.rs for the key layout).
-- ARGV[1] is the key prefix; each script's own arguments follow.
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ck(cid) return P .. ':ch:' .. cid end
local function bk(cid) return P .. ':buf:' .. cid end
local function sk(cid) return P .. ':chs:' .. cid end
local function homed(node) return P .. ':homed:' .. node end
local function inbox(node) return P .. ':inbox:' .. node end
local SESS = P .. ':sess'
local WATCH = P .. ':watch'
local DETACHED = P .. ':detached'
local NODES = P .. ':nodes'
-- The channel that hosts a cid or sid, or nil.
local function host_of(id)
  if redis.call('EXISTS', ck(id)) == 1 then return id end
  local rec = redis.call('HGET', SESS, id)
  if rec then return string.match(rec, '^([^\n]*)') end
  return nil
end
-- Only a key's SHA-1 is stored and compared: the compare's timing says nothing of the key.
local function kh(key) return redis.sha1hex(key) end
-- 404 / 403 for a channel and a key, or nil when the key owns the channel.
local function auth(cid, key)
  local have = redis.call('HGET', ck(cid), 'kh')
  if not have then return {'E', '404c'} end
  if have ~= kh(key) then return {'E', '403k'} end
  return nil
end
-- Closes a channel: its sessions go (watchers told), its home node ends the stream.
local function close_channel(cid)
  local home = redis.call('HGET', ck(cid), 'home')
  for _, sid in ipairs(redis.call('SMEMBERS', sk(cid))) do
    local rec = redis.call('HGET', SESS, sid)
    if rec then
      redis.call('HDEL', SESS, sid)
      redis.call('PUBLISH', WATCH, sid .. '\0' .. rec .. '\0')
    end
  end
  redis.call('DEL', ck(cid), bk(cid), sk(cid))
  redis.call('ZREM', DETACHED, cid)
  if home and home ~= '' then
    redis.call('SREM', homed(home), cid)
    redis.call('PUBLISH', inbox(home), 'c ' .. cid)
  end
end
