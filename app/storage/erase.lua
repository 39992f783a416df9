-- Erases one lead: its record, its score history, its memberships in segment sets and its due entry.
-- Every key it touches is declared in KEYS (app/storage/leads.py `erase` builds them with app/storage/keys.py):
--   KEYS[1]     the record, lead:{<id>}
--   KEYS[2]     its score-history list
--   KEYS[3..n]  the segment sets the record names, then the due index of its partition
-- ARGV[1]: the lead id (the member in the sorted sets); ARGV[2]: the record's value as the caller read it ('' for
-- none): the caller chose the keys above, and whether to erase at all, from that value.
--
-- Returns 0, changing nothing, when the record is no longer that value (the caller reads it again and decides
-- again), else 1.
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
for i = 3, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 1
