-- Argo CD health of an EvalGate (finetune.dev/v1alpha1). A gate is configuration: the operator writes only
-- its history (lastVerdict, history). A failing verdict is the job's news (that FineTuneJob is Degraded),
-- not a fault of the gate, so a gate is Healthy, and its message says what it last decided.
-- Lua 5.1 with the base, string and table libraries only, as Argo CD runs it; `obj` is the object.
local hs = {}
hs.status = "Healthy"
local status = obj.status or {}
local history = status.history or {}
if status.lastVerdict == nil or #history == 0 then
  hs.message = "no evaluation yet"
  return hs
end
local last = history[#history]
local evaluations = " evaluations"
if #history == 1 then
  evaluations = " evaluation"
end
hs.message = "last verdict " .. status.lastVerdict .. " for job " .. (last.job or "?") .. " ("
  .. #history .. evaluations .. " kept)"
return hs
