-- Argo CD health of a ModelDeployment (finetune.dev/v1alpha1), read from the status the operator writes.
--   Idle or Succeeded and Ready -> Healthy; Shadow, Canary, Promoting -> Progressing with the summary, or
--   Suspended while a pause action holds it; RolledBack, the operator failing to reconcile, an invalid spec,
--   or servers that were ready and are not now -> Degraded; not ready yet since the first version -> Progressing.
-- Lua 5.1 with the base, string and table libraries only, as Argo CD runs it; `obj` is the object.
local hs = {}

local function condition(status, kind)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function told(c, fallback)
  if c == nil or c.message == nil or c.message == "" then
    return fallback
  end
  return c.message
end

local status = obj.status
if status == nil or status.stage == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to pick the deployment up"
  return hs
end

local stage = status.stage
local summary = status.summary or stage

local failing = condition(status, "ReconcileError")
if failing ~= nil and failing.status == "True" then
  hs.status = "Degraded"
  hs.message = "the operator cannot reconcile this deployment: " .. told(failing, "no message")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "False" and ready.reason == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = "InvalidSpec: " .. told(ready, "the spec is not valid")
  return hs
end

if stage == "Shadow" or stage == "Canary" or stage == "Promoting" then
  if status.paused then
    hs.status = "Suspended"
    hs.message = "paused by annotation: " .. summary
  else
    hs.status = "Progressing"
    hs.message = summary
  end
  return hs
end

if stage == "RolledBack" then
  local c = condition(status, "RolledBack")
  local reason = ""
  if c ~= nil and c.reason ~= nil then
    reason = " (" .. c.reason .. ")"
  end
  hs.status = "Degraded"
  hs.message = "RolledBack" .. reason .. ": " .. told(c, summary)
  return hs
end

if stage == "Idle" or stage == "Succeeded" then
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = summary
    return hs
  end
  -- Ready has been False since the operator first saw the deployment (the condition turned False when the
  -- first version became stable): still starting. Otherwise it was ready and is not now.
  local stable = status.stable or {}
  local never = ready == nil or stable.since == nil or ready.lastTransitionTime == stable.since
  if never then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = summary .. ": " .. told(ready, "not ready")
  return hs
end

hs.status = "Unknown"
hs.message = "unknown stage " .. tostring(stage)
return hs
