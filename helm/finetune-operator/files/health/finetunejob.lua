-- Argo CD health of a FineTuneJob (finetune.dev/v1alpha1), read from the status the operator writes.
--   Succeeded -> Healthy; Failed, Rejected, or the operator failing to reconcile -> Degraded;
--   AwaitingApproval (names the verdict to approve) and Suspended -> Suspended; the rest -> Progressing.
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
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to pick the job up"
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = told(condition(status, "Succeeded"), "succeeded")
  if status.promoted ~= nil and status.promoted.uri ~= nil then
    hs.message = hs.message .. " (promoted to " .. status.promoted.uri .. ")"
  end
  return hs
end

if phase == "Failed" or phase == "Rejected" then
  local c = condition(status, "Failed")
  if c == nil or c.status ~= "True" then
    c = condition(status, "Succeeded")
  end
  local reason = ""
  if c ~= nil and c.reason ~= nil then
    reason = " (" .. c.reason .. ")"
  end
  hs.status = "Degraded"
  hs.message = phase .. reason .. ": " .. told(c, "no condition says why")
  return hs
end

local failing = condition(status, "ReconcileError")
if failing ~= nil and failing.status == "True" then
  hs.status = "Degraded"
  hs.message = "the operator cannot reconcile this job: " .. told(failing, "no message")
  return hs
end

if phase == "AwaitingApproval" then
  local gate = status.gate or {}
  hs.status = "Suspended"
  hs.message = "awaiting approval of verdict " .. (gate.verdictId or "(none yet)") .. ": "
    .. told(condition(status, "Approved"), "the gate passed and requires approval")
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = told(condition(status, "Suspended"), "suspended: spec.suspend is true")
  return hs
end

hs.status = "Progressing"
if phase == "Pending" or phase == "ValidatingData" then
  local scheduled = condition(status, "PodsScheduled")
  if scheduled ~= nil and scheduled.status == "False" then
    hs.message = phase .. ": " .. told(scheduled, "pods not scheduled")
  else
    hs.message = phase .. ": " .. told(condition(status, "DataValidated"), "starting")
  end
elseif phase == "Training" then
  local scheduled = condition(status, "PodsScheduled")
  local progress = status.progress
  if scheduled ~= nil and scheduled.status == "False" then
    hs.message = "Training: " .. told(scheduled, "pods not scheduled")
  elseif progress ~= nil and progress.summary ~= nil then
    hs.message = "Training: step " .. progress.summary
    if progress.remaining ~= nil then
      hs.message = hs.message .. ", " .. progress.remaining .. " left"
    end
  else
    hs.message = "Training: " .. told(condition(status, "Trained"), "started")
  end
elseif phase == "Evaluating" then
  hs.message = "Evaluating: " .. told(condition(status, "Evaluated"), "the gate's suites are running")
elseif phase == "Promoting" then
  hs.message = "Promoting: " .. told(condition(status, "Promoted"), "publishing the approved checkpoint")
else
  hs.status = "Unknown"
  hs.message = "unknown phase " .. tostring(phase)
end
return hs
