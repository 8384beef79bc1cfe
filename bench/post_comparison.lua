-- wrk script: each request posts a comparison (users, pairs and scores cycle), with the API key
-- from $LICCHAVI_KEY.  wrk -t2 -c8 -d8s --latency -s bench/post_comparison.lua http://127.0.0.1:8000
local key = os.getenv("LICCHAVI_KEY")
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"user_id":"w%d","video_a":"wa%d","video_b":"wb%d","criteria_scores":[{"criterion":"largely_recommended","score":%d}]}',
    counter % 97, counter % 1013, counter % 211, counter % 21 - 10)
  return wrk.format("POST", "/api/v1/comparisons",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}, body)
end
