-- Writes a batch of lead records with their score history, segment memberships and due times; returns the
-- positions (1-based) of the records it refused. Every key it touches is declared in KEYS
-- (app/storage/leads.py `save_batch` builds them with app/storage/keys.py):
--   KEYS[1..n]        the records' keys, lead:{<id>}
--   KEYS[n+1..2n]     their score-history lists
--   then              the segment sets of ARGV[6], in that order
--   then              the due indexes of the partitions of ARGV[7], in that order
--   last              the records' layout key
-- ARGV[1]: 'event' or 'sweep'; ARGV[2]: history entries kept; ARGV[3]: one blob holding, per record in KEYS
-- order, its lead id, its value and a history entry ('' for none), each a 4-byte little-endian length and the
-- bytes (one argument: the client's cost is per argument); ARGV[4]: the layout's names (set if missing);
-- ARGV[5]: n; ARGV[6]: the segment sets declared, 'set=segment,...'; ARGV[7]: the partitions declared, '0,1,...'.
--
-- A value's header (app/storage/codec.py owns the format) is
--   <version>|<partition>|<offset>|<set>=<segment>,...|<score>|<due ms>|<body>
-- An event write needs a newer offset than stored (same partition); a sweep write (a rescore with no new
-- event) needs the stored offset to be unchanged since it was loaded. Refused writes change nothing.
-- A membership in a segment set or due index that is not declared (a segment no longer configured, a
-- partition the batch does not name) is left alone: the listing of an unconfigured segment is refused anyway,
-- and the sweeper drops a due entry whose lead moved to another partition.
local sweep = ARGV[1] == 'sweep'
local history_length = tonumber(ARGV[2])
local blob = ARGV[3]
local n = tonumber(ARGV[5])
local segment_keys, due_keys = {}, {}
local k = 2 * n
for name in string.gmatch(ARGV[6], '[^,]+') do
  k = k + 1
  segment_keys[name] = KEYS[k]
end
for partition in string.gmatch(ARGV[7], '[^,]+') do
  k = k + 1
  due_keys[partition] = KEYS[k]
end
-- the records' layout, kept in Redis with them (also after a flush while this process runs)
redis.call('SET', KEYS[#KEYS], ARGV[4], 'NX')

-- Commands are gathered per key and sent at the end, one command for many members (a call from Lua costs about
-- as much as the work of a small ZADD): a lead appears once in a batch, so no two gathered commands touch the
-- same member of the same key, and their order does not matter.
local zadds, zrems = {}, {}
local function members_of(commands, key)
  local list = commands[key]
  if not list then
    list = {}
    commands[key] = list
  end
  return list
end
local function add(key, score, lead)
  if key then
    local list = members_of(zadds, key)
    list[#list + 1] = score
    list[#list + 1] = lead
  end
end
local function remove(key, lead)
  if key then
    local list = members_of(zrems, key)
    list[#list + 1] = lead
  end
end

-- A header's segments, 'set=segment,...', as {set, segment, key of that segment set} entries and by set: parsed
-- once per distinct text (a batch's leads share a handful of combinations).
local parsed_segments = {}
local function segments_of(text)
  local parsed = parsed_segments[text]
  if not parsed then
    parsed = {list = {}, by_set = {}}
    for set, segment in string.gmatch(text, '([^,=]+)=([^,]+)') do
      local entry = {set, segment, segment_keys[set .. '=' .. segment]}
      parsed.list[#parsed.list + 1] = entry
      parsed.by_set[set] = segment
    end
    parsed_segments[text] = parsed
  end
  return parsed
end
local no_segments = segments_of('')

-- Lua's unpack has a stack limit: long argument lists go out in chunks.
local CHUNK = 4000
local function call_chunked(command, key, args, step)
  local size = CHUNK - CHUNK % step
  for first = 1, #args, size do
    local last = math.min(first + size - 1, #args)
    if key then
      redis.call(command, key, unpack(args, first, last))
    else
      redis.call(command, unpack(args, first, last))
    end
  end
end

local current_values = {}
for first = 1, n, CHUNK do
  local got = redis.call('MGET', unpack(KEYS, first, math.min(first + CHUNK - 1, n)))
  for j = 1, #got do
    current_values[first + j - 1] = got[j]
  end
end

local pos = 1
local header = '^%d+|(-?%d+)|(-?%d+)|([^|]*)|([^|]*)|([^|]*)|'
local refused = {}
local sets = {}
for i = 1, n do
  local lead, value, history
  lead, value, history, pos = struct.unpack('<I4c0I4c0I4c0', blob, pos)
  local partition, offset, segments, score, due = string.match(value, header)
  offset = tonumber(offset)
  local current = current_values[i]
  local old_partition, old_offset, old_segments, old_score, old_due
  if current then
    old_partition, old_offset, old_segments, old_score, old_due = string.match(current, header)
  end
  local stale
  if sweep then
    stale = not current or old_partition ~= partition or tonumber(old_offset) ~= offset
  else
    stale = current and old_partition == partition and tonumber(old_offset) >= offset
  end
  if stale then
    refused[#refused + 1] = i
    if sweep and (not current or old_partition ~= partition) then
      remove(due_keys[partition], lead)
    end
  else
    sets[#sets + 1] = KEYS[i]
    sets[#sets + 1] = value
    if history ~= '' and history_length > 0 then
      if redis.call('LPUSH', KEYS[n + i], history) > history_length then
        redis.call('LTRIM', KEYS[n + i], 0, history_length - 1)
      end
    end
    local new = segments_of(segments)
    if old_segments == segments then
      -- the usual update: the same segments, so only a changed score re-ranks the lead in them
      if old_score ~= score and score ~= '' then
        for _, entry in ipairs(new.list) do
          add(entry[3], score, lead)
        end
      end
    else
      local old = old_segments and segments_of(old_segments) or no_segments
      for _, entry in ipairs(old.list) do
        if new.by_set[entry[1]] ~= entry[2] then
          remove(entry[3], lead)
        end
      end
      if score ~= '' then
        for _, entry in ipairs(new.list) do
          -- the set already ranks the lead by this score when neither segment nor score changed
          if old.by_set[entry[1]] ~= entry[2] or old_score ~= score then
            add(entry[3], score, lead)
          end
        end
      end
    end
    local moved = old_partition ~= partition
    if old_partition and moved then
      remove(due_keys[old_partition], lead)
    end
    -- the due index holds exactly the stored due times, so an unchanged one needs no command
    if due ~= '' then
      if moved or old_due ~= due then
        add(due_keys[partition], due, lead)
      end
    elseif moved or old_due ~= '' then
      remove(due_keys[partition], lead)
    end
  end
end
call_chunked('MSET', nil, sets, 2)
for key, members in pairs(zrems) do
  call_chunked('ZREM', key, members, 1)
end
for key, pairs_of in pairs(zadds) do
  call_chunked('ZADD', key, pairs_of, 2)
end
return refused
